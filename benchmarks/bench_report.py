"""Benchmark: the cost of report() rounds and of starting a run, with DataParallelTrainer on 2 local workers.

Measures, in one fresh run per repeat:

- fit() to the first line of the training function (rank 0; the worker processes start from nothing);
- fit() to the return of the first report() (rank 0);
- the round trip of report() without a checkpoint, over ``--rounds`` rounds (rank 0): median, p90, p99, max;
- the round trip of report() with a small SYNC checkpoint from rank 0 (one 4 KiB file), over ``--ckpt-rounds``;
- the ASYNC hand-over (issue 15 target 4): how long report(checkpoint_upload_mode=ASYNC) blocks on each of the 2
  ranks, each reporting its own file of 4 KiB / 10 MB / 100 MB (``--async-sizes``) every round, over
  ``--async-rounds`` rounds; between two reports the rank waits (get_checkpoint()) until the round is committed,
  so the hand-over is measured, not the bound on uploads in flight (which makes a third report wait, by design).

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


def async_loop(config: dict[str, Any]) -> dict[str, list[float]]:
    """Report ASYNC checkpoints of each size in ``config["sizes"]``; time how long each report() blocks."""
    rank = tk.get_context().get_world_rank()
    blocked: dict[str, list[float]] = {}
    for size in config["sizes"]:
        times = blocked[str(size)] = []
        for i in range(config["rounds"]):
            d = tempfile.mkdtemp(dir=config["tmp"])
            with open(os.path.join(d, f"shard_{rank}.bin"), "wb") as f:
                f.write(os.urandom(size))
            time.sleep(config["pause_s"])  # the training step between saving and reporting, if any
            checkpoint = tk.Checkpoint.from_directory(d)
            name = f"async_{size}_{i}"
            start = time.perf_counter()
            tk.report({"size": size, "i": i}, checkpoint=checkpoint, checkpoint_dir_name=name,
                      checkpoint_upload_mode=tk.CheckpointUploadMode.ASYNC)
            times.append(time.perf_counter() - start)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # this round is committed before the next report: no queue
                latest = tk.get_checkpoint()
                if latest is not None and latest.path.endswith(name):
                    break
                time.sleep(0.002)
    return blocked


def run_async(sizes: list[int], rounds: int, pause_s: float, workdir: str) -> dict[str, list[float]]:
    """Return, per size, the seconds report() blocked in ASYNC mode on both ranks (one fresh 2-worker run)."""
    tmp = tempfile.mkdtemp(dir=workdir)
    run = tk.RunConfig(name="bench_async", storage_path=os.path.join(tmp, "runs"),
                       checkpoint_config=tk.CheckpointConfig(num_to_keep=2))
    per_rank: dict[int, dict[str, list[float]]] = {}

    def loop(config: dict[str, Any]) -> None:
        import json as _json

        blocked = async_loop(config)
        rank = tk.get_context().get_world_rank()
        with open(os.path.join(config["tmp"], f"blocked_{rank}.json"), "w") as f:
            _json.dump(blocked, f)

    trainer = tk.DataParallelTrainer(loop, train_loop_config={"sizes": sizes, "rounds": rounds, "tmp": tmp,
                                                             "pause_s": pause_s},
                                     scaling_config=tk.ScalingConfig(num_workers=2), run_config=run)
    trainer.fit()
    for rank in (0, 1):
        with open(os.path.join(tmp, f"blocked_{rank}.json")) as f:
            per_rank[rank] = json.load(f)
    return {str(size): per_rank[0][str(size)] + per_rank[1][str(size)] for size in sizes}


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
    parser.add_argument("--async-sizes", default="4096,10000000,100000000",
                        help="ASYNC hand-over: checkpoint file sizes in bytes, comma-separated (empty: skip)")
    parser.add_argument("--async-rounds", type=int, default=30, help="ASYNC reports per size and rank")
    parser.add_argument("--async-pauses", default="0,0.1",
                        help="ASYNC hand-over: seconds between writing the file and report(), comma-separated")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_report.json"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="tk-bench-report-") as workdir:
        for _ in range(args.repeats):
            runs.append(run_once(args.rounds, args.ckpt_rounds, workdir))
        sizes = [int(s) for s in args.async_sizes.split(",") if s]
        handover = {}
        for pause in [float(x) for x in args.async_pauses.split(",") if x] if sizes else []:
            for size, samples in run_async(sizes, args.async_rounds, pause, workdir).items():
                handover[f"{size} B, pause {pause:g} s"] = samples
    report = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0]},
        "num_workers": 2, "rounds": args.rounds, "ckpt_rounds": args.ckpt_rounds, "repeats": args.repeats,
        "fit_to_first_line_s": [r["fit_to_first_line_s"] for r in runs],
        "fit_to_first_report_s": [r["fit_to_first_report_s"] for r in runs],
        "fit_total_s": [r["fit_total_s"] for r in runs],
        "report_no_checkpoint": summarize([s for r in runs for s in r["plain_s"]]),
        "report_with_checkpoint": summarize([s for r in runs for s in r["with_ckpt_s"]]),
        "async_handover": {size: summarize(samples) for size, samples in handover.items()},
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
    for key, s in report["async_handover"].items():
        size, _, pause = key.partition(" B, ")
        label = f"ASYNC {int(size) / 1e6:g} MB, {pause} (ms)"
        print(f"{label:<34}{s['median_ms']:>10.3f}{s['p90_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['max_ms']:>10.3f}")
    for key, label in (("fit_to_first_line_s", "fit() to first line (s)"),
                       ("fit_to_first_report_s", "fit() to first report (s)")):
        values = report[key]
        print(f"{label:<34}{statistics.median(values):>10.3f}{'':>10}{'':>10}{max(values):>10.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
