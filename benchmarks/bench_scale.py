"""Benchmark: does the cost of a round stay constant as a run grows (DESIGN §6)?

Three runs, each on a fresh run directory under a temp dir (removed at the end):

- ``manager-metrics``:     ``--metric-rounds`` (100,000) metrics-only rounds through ``CheckpointManager.report``;
- ``manager-checkpoints``: ``--checkpoint-rounds`` (10,000) rounds, each with a tiny checkpoint, ``num_to_keep=2``
  ranked by a loss that goes up and down;
- ``trainer-metrics``:     ``--trainer-rounds`` (20,000) metrics-only rounds through ``trainkeep.DataParallelTrainer``
  with 2 local workers (skipped when the trainer is not importable), timed in rank 0's loop.

For each: the mean and median cost of a round in the first and the last 5% of rounds, the ratio last / first
(target: at most 1.5), the sizes of the run index and of the history at the end, the time to reopen the run,
and the growth of this process's RSS. Prints a table and writes benchmarks/results/bench_scale.json.

``reopen`` (issue 15, target 1): two metrics-only runs of ``--reopen-small`` (1,000) and ``--reopen-rounds``
(1,000,000) rounds, each with a tiny checkpoint in its first and last round, written through
``CheckpointManager.report`` (the library's own writer: metrics-only rows are appended without fsync and made
durable in batches). Then each probe runs ``--repeat`` (3) times in a FRESH interpreter (a subprocess; the time
is taken inside it, after ``import trainkeep``, and the page cache is warm; the CPU seconds of the process,
all threads, are shown next to the wall time for the open and the DataFrame, to tell load from work): opening the run
(``CheckpointManager(...)``), ``resume_checkpoint()``, ``trainkeep ls RUN --json`` (the click command, in
process) and ``Result.from_path(RUN).checkpoint`` at both sizes, and ``Result.from_path(RUN).metrics_dataframe``
at the large size (pandas imported first). Prints the medians, the ratio large / small (target: at most 1.5), the 50 ms bound at the
large size and the 3 s bound of the DataFrame, with the load average before and after.

``--only`` picks the parts to run (``growth``: the three runs above; ``reopen``; default both).

``--profile`` instead runs cProfile over the first and the last 5% of the manager runs and prints the functions
whose time grew the most, to find what makes a round slower as the run grows.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

import trainkeep
from trainkeep import CheckpointConfig, CheckpointManager

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "bench_scale.json")
WINDOW = 0.05
TARGET_RATIO = 1.5


def loss_at(i: int) -> float:
    """Return a deterministic loss that goes up and down with ``i``."""
    return 1.0 + ((7919 * i) % 1000) / 1000


def summarize(durations: list[float]) -> dict[str, Any]:
    """Return the mean and median round cost (seconds) in the first and last 5% and their ratios."""
    n = max(1, int(len(durations) * WINDOW))
    first, last = durations[:n], durations[-n:]
    out: dict[str, Any] = {"rounds": len(durations), "window_rounds": n,
           "first_mean_s": statistics.fmean(first), "last_mean_s": statistics.fmean(last),
           "first_median_s": statistics.median(first), "last_median_s": statistics.median(last)}
    # Every 5% window's mean: a real growth shows as a trend, a burst of load from other processes as one bump.
    out["window_means_s"] = [statistics.fmean(durations[i * n:(i + 1) * n]) for i in range(len(durations) // n)]
    out["ratio_mean"] = out["last_mean_s"] / out["first_mean_s"]
    out["ratio_median"] = out["last_median_s"] / out["first_median_s"]
    out["met"] = out["ratio_mean"] <= TARGET_RATIO
    return out


def run_sizes(run_dir: str) -> dict[str, int]:
    """Return the bytes of the run index and of the history files of ``run_dir``."""
    index = os.path.join(run_dir, "trainkeep_run.json")
    history = sum(os.path.getsize(os.path.join(run_dir, name)) for name in os.listdir(run_dir)
                  if name.startswith("history"))
    return {"index_bytes": os.path.getsize(index) if os.path.exists(index) else 0, "history_bytes": history}


def time_reopen(run_dir: str, config: CheckpointConfig) -> float:
    """Return the seconds it takes to open (resume) the run at ``run_dir`` and close it again."""
    t0 = time.perf_counter()
    CheckpointManager(run_dir, config).close()
    return time.perf_counter() - t0


def drive_manager(run_dir: str, rounds: int, config: CheckpointConfig, checkpoint: trainkeep.Checkpoint | None,
                  on_round: Callable[[int], None] | None = None) -> list[float]:
    """Report ``rounds`` rounds to a fresh manager at ``run_dir``; return each round's seconds.

    ``on_round(i)`` is called before round i, and with ``rounds`` after the last one (before the close).
    """
    durations = [0.0] * rounds
    clock = time.perf_counter
    with CheckpointManager(run_dir, config) as manager:
        for i in range(rounds):
            if on_round is not None:
                on_round(i)
            t0 = clock()
            manager.report({"loss": loss_at(i), "step": i}, checkpoint=checkpoint)
            durations[i] = clock() - t0
        if on_round is not None:
            on_round(rounds)
    return durations


def tiny_checkpoint(root: str) -> trainkeep.Checkpoint:
    """Return a checkpoint of one 1 KiB file, written once and reported every round."""
    src = os.path.join(root, "tiny_src")
    os.makedirs(src)
    with open(os.path.join(src, "state.bin"), "wb") as f:
        f.write(os.urandom(1024))
    return trainkeep.Checkpoint.from_directory(src)


def bench_manager(root: str, name: str, rounds: int, with_checkpoint: bool) -> dict[str, Any]:
    """Measure ``rounds`` manager rounds, metrics-only or with a tiny checkpoint and num_to_keep=2."""
    run_dir = os.path.join(root, name)
    config = (CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")
              if with_checkpoint else CheckpointConfig())
    checkpoint = tiny_checkpoint(root) if with_checkpoint else None
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    durations = drive_manager(run_dir, rounds, config, checkpoint)
    total = time.perf_counter() - t0
    rss1 = psutil.Process().memory_info().rss
    kept = sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint_"))
    return {"name": name, **summarize(durations), "total_s": total, **run_sizes(run_dir),
            "reopen_s": time_reopen(run_dir, config), "rss_growth_bytes": rss1 - rss0,
            "checkpoints_on_storage": len(kept)}


# ---------------------------------------------------------------------------------------------- trainer


def trainer_loop(config: dict[str, Any]) -> None:
    """Report ``config["rounds"]`` metrics-only rounds; rank 0 writes each round's seconds to a JSON file."""
    import trainkeep as tk

    rank = tk.get_context().get_world_rank()
    clock = time.perf_counter
    durations = [0.0] * config["rounds"]
    for i in range(config["rounds"]):
        t0 = clock()
        tk.report({"loss": 1.0 + ((7919 * i) % 1000) / 1000, "step": i})
        durations[i] = clock() - t0
    if rank == 0:
        with open(config["out"], "w") as f:
            json.dump(durations, f)


def bench_trainer(root: str, rounds: int, workers: int) -> dict[str, Any]:
    """Measure ``rounds`` metrics-only rounds through DataParallelTrainer with ``workers`` local workers."""
    out = os.path.join(root, "trainer_durations.json")
    trainer = trainkeep.DataParallelTrainer(
        trainer_loop, train_loop_config={"rounds": rounds, "out": out},
        scaling_config=trainkeep.ScalingConfig(num_workers=workers),
        run_config=trainkeep.RunConfig(name="trainer-metrics", storage_path=root))
    t0 = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - t0
    with open(out) as f:
        durations = json.load(f)
    run_dir = os.path.join(root, "trainer-metrics")
    return {"name": "trainer-metrics", "workers": workers, **summarize(durations), "total_s": total,
            **run_sizes(run_dir), "reopen_s": time_reopen(run_dir, CheckpointConfig())}


def has_trainer() -> bool:
    """Return whether ``trainkeep.DataParallelTrainer`` is importable."""
    try:
        return callable(trainkeep.DataParallelTrainer)
    except AttributeError:
        return False


# ---------------------------------------------------------------------------------------------- reopen


REOPEN_CONFIG = CheckpointConfig(num_to_keep=2)
REOPEN_TARGET_S = 0.050
DATAFRAME_TARGET_S = 3.0
PROBE = r"""
import contextlib, io, json, sys, time
probe, run = sys.argv[1], sys.argv[2]
import trainkeep as tk
from trainkeep.cli import cli
clock, cpu = time.perf_counter, time.process_time
t0, c0 = clock(), cpu()
if probe == "open":
    manager = tk.CheckpointManager(run, tk.CheckpointConfig(num_to_keep=2))
    t1 = clock()
    found = manager.resume_checkpoint() is not None
    t2 = clock()
    manager.close()
    out = {"open": t1 - t0, "resume": t2 - t1, "open+resume": t2 - t0, "close": clock() - t2, "found": found,
           "open+resume+close cpu": cpu() - c0}
elif probe == "ls":
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli.main(["ls", run, "--json"], standalone_mode=False)
    out = {"ls": clock() - t0, "found": len(json.loads(buffer.getvalue())) > 0}
elif probe == "result":
    found = tk.Result.from_path(run).checkpoint is not None
    out = {"result.checkpoint": clock() - t0, "found": found}
else:
    import pandas  # imported before the clock starts: the bound is on reading the history, not on pandas
    t0, c0 = clock(), cpu()
    frame = tk.Result.from_path(run).metrics_dataframe
    out = {"metrics_dataframe": clock() - t0, "metrics_dataframe cpu": cpu() - c0, "rows": len(frame)}
print(json.dumps(out))
"""


def write_metrics_run(run_dir: str, rounds: int, checkpoint: trainkeep.Checkpoint) -> float:
    """Write ``rounds`` metrics-only rounds (a checkpoint in the first and the last); return the seconds."""
    t0 = time.perf_counter()
    with CheckpointManager(run_dir, REOPEN_CONFIG) as manager:
        for i in range(rounds):
            manager.report({"loss": loss_at(i), "step": i}, checkpoint if i in (0, rounds - 1) else None)
    return time.perf_counter() - t0


def probe(name: str, run_dir: str) -> dict[str, Any]:
    """Run probe ``name`` on ``run_dir`` in a fresh interpreter; return its timings (and its wall seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, name, run_dir], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"probe {name} on {run_dir} failed:\n{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - t0}


def bench_reopen(root: str, small: int, large: int, repeat: int) -> dict[str, Any]:
    """Time the reopen probes at ``small`` and ``large`` rounds and metrics_dataframe at ``large``."""
    checkpoint = tiny_checkpoint(os.path.join(root, "reopen-src"))
    out: dict[str, Any] = {"small": small, "large": large, "repeat": repeat, "load_before": os.getloadavg()}
    for size in (small, large):
        run_dir = os.path.join(root, f"reopen-{size}")
        out[f"write_s_{size}"] = write_metrics_run(run_dir, size, checkpoint)
        out[f"sizes_{size}"] = run_sizes(run_dir)
        samples: dict[str, list[float]] = {}
        probes = ("open", "ls", "result") + (("dataframe",) if size == large else ())
        for _ in range(repeat):
            for name in probes:
                for key, value in probe(name, run_dir).items():
                    if isinstance(value, float):
                        samples.setdefault(key, []).append(value)
        out[f"median_s_{size}"] = {key: statistics.median(values) for key, values in samples.items()}
        out[f"samples_s_{size}"] = samples
    out["load_after"] = os.getloadavg()
    small_m, large_m = out[f"median_s_{small}"], out[f"median_s_{large}"]
    out["checks"] = [
        *({"what": f"{key}: {large:,} / {small:,} rounds", "value": large_m[key] / small_m[key],
           "limit": TARGET_RATIO} for key in ("open+resume", "open", "resume", "ls", "result.checkpoint")),
        *({"what": f"{key} at {large:,} rounds (s)", "value": large_m[key], "limit": REOPEN_TARGET_S}
          for key in ("open+resume", "ls", "result.checkpoint")),
        {"what": f"metrics_dataframe at {large:,} rounds (s)", "value": large_m["metrics_dataframe"],
         "limit": DATAFRAME_TARGET_S}]
    for check in out["checks"]:
        check["met"] = check["value"] <= check["limit"]
    return out


def print_reopen(result: dict[str, Any]) -> None:
    """Print the reopen medians at both sizes, then each target and whether it is met."""
    small, large = result["small"], result["large"]
    keys = list(result[f"median_s_{large}"])
    print(f"\nreopen, median of {result['repeat']} fresh interpreters (ms); load average before "
          f"{'/'.join(f'{x:.2f}' for x in result['load_before'])}, after "
          f"{'/'.join(f'{x:.2f}' for x in result['load_after'])}")
    print(f"{'probe':<20} {small:>12,} {large:>12,} {'ratio':>7}")
    for key in keys:
        a, b = result[f"median_s_{small}"].get(key), result[f"median_s_{large}"][key]
        ratio = f"{b / a:7.2f}" if a else "      -"
        print(f"{key:<20} {a * 1e3 if a else float('nan'):>12.1f} {b * 1e3:>12.1f} {ratio}")
    print(f"history: {result[f'sizes_{small}']['history_bytes'] / 1e6:.2f} MB and "
          f"{result[f'sizes_{large}']['history_bytes'] / 1e6:.1f} MB, written in "
          f"{result[f'write_s_{small}']:.1f} s and {result[f'write_s_{large}']:.1f} s")
    for check in result["checks"]:
        print(f"target {check['what']}: {check['value']:.3f} (limit {check['limit']})  "
              f"{'met' if check['met'] else 'MISSED'}")


# ---------------------------------------------------------------------------------------------- profiling


def profile_manager(root: str, name: str, rounds: int, with_checkpoint: bool, top: int) -> None:
    """Profile the first and last 5% of a manager run separately; print the functions whose time grew most."""
    n = max(1, int(rounds * WINDOW))
    first, last = cProfile.Profile(), cProfile.Profile()

    def on_round(i: int) -> None:
        if i == 0:
            first.enable()
        elif i == n:
            first.disable()
        elif i == rounds - n:
            last.enable()
        elif i == rounds:
            last.disable()

    config = (CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")
              if with_checkpoint else CheckpointConfig())
    checkpoint = tiny_checkpoint(os.path.join(root, f"{name}-src")) if with_checkpoint else None
    drive_manager(os.path.join(root, name), rounds, config, checkpoint, on_round)
    before, after = _tottime_by_function(first), _tottime_by_function(last)
    growth = sorted(((after.get(k, 0.0) - before.get(k, 0.0), k) for k in set(before) | set(after)), reverse=True)
    print(f"\n{name}: {n} rounds per window; per-round seconds by function, last 5% vs first 5%")
    for delta, key in growth[:top]:
        print(f"  +{delta / n * 1e6:9.2f} us  first {before.get(key, 0) / n * 1e6:9.2f} us  "
              f"last {after.get(key, 0) / n * 1e6:9.2f} us  {key}")


def _tottime_by_function(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile)
    return {f"{os.path.relpath(file) if file.startswith('/') else file}:{line}({func})": row[2]
            for (file, line, func), row in stats.stats.items()}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- driver


def machine() -> dict[str, Any]:
    """Describe this machine and the versions that the numbers come from."""
    model = ""
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {"nproc": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "cpu": model,
            "python": platform.python_version(), "trainkeep": trainkeep.__version__}


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one line per run: round cost at the start and the end, ratio, sizes."""
    head = (f"{'run':<20} {'rounds':>7} {'first us':>9} {'last us':>9} {'ratio':>6} {'med first':>9} "
            f"{'med last':>9} {'ratio':>6} {'index B':>8} {'history MB':>10} {'reopen s':>8} {'total s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<20} {r['rounds']:>7} {r['first_mean_s'] * 1e6:>9.1f} {r['last_mean_s'] * 1e6:>9.1f} "
              f"{r['ratio_mean']:>6.2f} {r['first_median_s'] * 1e6:>9.1f} {r['last_median_s'] * 1e6:>9.1f} "
              f"{r['ratio_median']:>6.2f} {r['index_bytes']:>8} {r['history_bytes'] / 1e6:>10.2f} "
              f"{r['reopen_s']:>8.3f} {r['total_s']:>8.1f}")
    for r in rows:
        windows = " ".join(f"{m * 1e6:.0f}" for m in r["window_means_s"])
        print(f"{r['name']}: mean us per 5% window: {windows}")
    for r in rows:
        verdict = "met" if r["met"] else "MISSED"
        print(f"target {r['name']}: last 5% / first 5% mean round cost {r['ratio_mean']:.2f} "
              f"(limit {TARGET_RATIO})  {verdict}")


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark (or, with --profile, the profile of its manager runs)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metric-rounds", type=int, default=100_000)
    parser.add_argument("--checkpoint-rounds", type=int, default=10_000)
    parser.add_argument("--trainer-rounds", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reopen-small", type=int, default=1_000)
    parser.add_argument("--reopen-rounds", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per reopen probe")
    parser.add_argument("--only", choices=("all", "growth", "reopen"), default="all")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--profile", action="store_true", help="profile the manager runs instead of timing them")
    parser.add_argument("--top", type=int, default=12, help="functions to list with --profile")
    args = parser.parse_args(argv)
    for flag in ("metric_rounds", "checkpoint_rounds", "trainer_rounds"):
        if getattr(args, flag) < 20:
            parser.error(f"--{flag.replace('_', '-')} must be at least 20, got {getattr(args, flag)}")
    root = tempfile.mkdtemp(prefix="tkscale-")
    try:
        if args.profile:
            profile_manager(root, "manager-metrics", args.metric_rounds, False, args.top)
            profile_manager(root, "manager-checkpoints", args.checkpoint_rounds, True, args.top)
            return 0
        rows: list[dict[str, Any]] = []
        if args.only in ("all", "growth"):
            rows = [bench_manager(root, "manager-metrics", args.metric_rounds, False),
                    bench_manager(root, "manager-checkpoints", args.checkpoint_rounds, True)]
            if has_trainer():
                rows.append(bench_trainer(root, args.trainer_rounds, args.workers))
            else:
                print("trainkeep.DataParallelTrainer is not available: skipping the trainer run", file=sys.stderr)
        reopen = (bench_reopen(root, args.reopen_small, args.reopen_rounds, args.repeat)
                  if args.only in ("all", "reopen") else None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"machine": machine(), "window": WINDOW, "target_ratio": TARGET_RATIO, "runs": rows,
              "reopen": reopen}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    if rows:
        print_table(rows)
    if reopen is not None:
        print_reopen(reopen)
    print(f"wrote {args.out}")
    checks = [r["met"] for r in rows] + [c["met"] for c in (reopen or {}).get("checks", [])]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
