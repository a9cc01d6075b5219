"""Benchmark: the cost of report() rounds and of starting a run, with DataParallelTrainer on 2 local workers.

Measures, in one fresh run per repeat:

- fit() to the first line of the training function (rank 0; the worker processes start from nothing);
- fit() to the return of the first report() (rank 0);
- the round trip of report() without a checkpoint, over ``--rounds`` rounds (rank 0): median, p90, p99, max;
- the round trip of report() with a small SYNC checkpoint from rank 0 (one 4 KiB file), over ``--ckpt-rounds``.

Prints a table and writes benchmarks/results/bench_report.json. Run by hand or by ``make bench``, never as a
timed test: ``python benchmarks/bench_report.py [--rounds 1000] [--repeats 3]``.
For scale, Ray Train 2.60 takes about 2 s per report round (its 2 s polling) and about 11 s from fit() to the
loop on a 2-core machine (see docs/trainer.md and benchmarks/bench_vs_ray.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import trainkeep as tk

HERE = os.path.dirname(os.path.abspath(__file__))


def loop(config: dict[str, Any]) -> dict[str, Any]:
    """Report metrics-only rounds, then small checkpoint rounds; time each report() on this rank."""
    entered = time.time()
    rank = tk.get_context().get_world_rank()
    tk.report({"round": -1})
    first_report = time.time()
    plain = []
    for i in range(config["rounds"]):
        start = time.perf_counter()
        tk.report({"round": i, "loss": 1.0 / (i + 1)})
        plain.append(time.perf_counter() - start)
    with_ckpt = []
    for i in range(config["ckpt_rounds"]):
        checkpoint = None
        if rank == 0:
            d = tempfile.mkdtemp(dir=config["tmp"])
            with open(os.path.join(d, "state.bin"), "wb") as f:
                f.write(os.urandom(4096))
            checkpoint = tk.Checkpoint.from_directory(d)
        start = time.perf_counter()
        tk.report({"ckpt_round": i}, checkpoint=checkpoint)
        with_ckpt.append(time.perf_counter() - start)
    return {"entered": entered, "first_report": first_report, "plain": plain, "with_ckpt": with_ckpt}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_once(rounds: int, ckpt_rounds: int, workdir: str) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(dir=workdir)
    run = tk.RunConfig(name="bench", storage_path=os.path.join(tmp, "runs"),
                       checkpoint_config=tk.CheckpointConfig(num_to_keep=2))
    trainer = tk.DataParallelTrainer(loop, train_loop_config={"rounds": rounds, "ckpt_rounds": ckpt_rounds, "tmp": tmp},
                                     scaling_config=tk.ScalingConfig(num_workers=2), run_config=run)
    started = time.time()
    result = trainer.fit()
    total = time.time() - started
    value = result.return_value
    return {"fit_to_first_line_s": value["entered"] - started, "fit_to_first_report_s": value["first_report"] - started,
            "fit_total_s": total, "plain_s": value["plain"], "with_ckpt_s": value["with_ckpt"]}


def summarize(samples: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in samples]
    return {"median_ms": statistics.median(ms), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="metrics-only report() rounds per run")
    parser.add_argument("--ckpt-rounds", type=int, default=100, help="report() rounds with a checkpoint per run")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs (worker starts) to measure")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_report.json"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="tk-bench-report-") as workdir:
        for _ in range(args.repeats):
            runs.append(run_once(args.rounds, args.ckpt_rounds, workdir))
    report = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0]},
        "num_workers": 2, "rounds": args.rounds, "ckpt_rounds": args.ckpt_rounds, "repeats": args.repeats,
        "fit_to_first_line_s": [r["fit_to_first_line_s"] for r in runs],
        "fit_to_first_report_s": [r["fit_to_first_report_s"] for r in runs],
        "fit_total_s": [r["fit_total_s"] for r in runs],
        "report_no_checkpoint": summarize([s for r in runs for s in r["plain_s"]]),
        "report_with_checkpoint": summarize([s for r in runs for s in r["with_ckpt_s"]]),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"report() with 2 workers ({args.repeats} runs, load average {report['machine']['load_avg_1m']:.1f})")
    print(f"{'measure':<34}{'median':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    for key, label in (("report_no_checkpoint", "report() no checkpoint (ms)"),
                       ("report_with_checkpoint", "report() 4 KiB SYNC checkpoint (ms)")):
        s = report[key]
        print(f"{label:<34}{s['median_ms']:>10.3f}{s['p90_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['max_ms']:>10.3f}")
    for key, label in (("fit_to_first_line_s", "fit() to first line (s)"),
                       ("fit_to_first_report_s", "fit() to first report (s)")):
        values = report[key]
        print(f"{label:<34}{statistics.median(values):>10.3f}{'':>10}{'':>10}{max(values):>10.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
