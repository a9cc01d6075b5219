"""Benchmark: the same training loop through Ray Train 2.60 and through trainkeep, side by side.

Run ``benchmarks/bench_vs_ray.sh`` (it builds ``.venv-bench`` with Ray, torch and trainkeep; arguments pass on):
``--sizes 0,10,100,500 --reports 20 --systems ray-default,ray-fast,trainkeep``. Per checkpoint size S (MB) three
configurations run back to back, each in a fresh subprocess: Ray Train V2's DataParallelTrainer with 2 CPU
workers at its defaults (``ray-default``) and with ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1`` (``ray-fast``),
and ``trainkeep.DataParallelTrainer`` with 2 local worker processes. Rank 0 writes an S MB torch.save checkpoint
every round (S=0: none); ``num_to_keep=2`` by a loss that goes up and down, so both must keep the same ones.

Measured per run: fit() to the loop's first line, mean time per round (rank 0, between report() returns), total
fit() time, peak RSS summed over the driver and every process it (or Ray) started, bytes on storage, and the
losses of the checkpoints left. Ray is bound to 127.0.0.1 and its sockets are checked. Prints a table with
trainkeep / Ray(best) ratios and the targets of issues 7 and 15; writes benchmarks/results/bench_vs_ray.json.

Two more systems per size (issue 15, target 3): ``trainkeep-no-upload``, where rank 0 writes its checkpoint
straight into the run's directory and reports it with ``checkpoint_upload_mode=NO_UPLOAD``, and ``by-hand``, the
same save into a directory of its own followed by an fsync of each file, the directory and its parent, with no
library at all (one process): the cost of a durable checkpoint on this disk.

This file holds the command line and the measurement of each system; vs_ray_probes.py the memory, socket and
storage probes; vs_ray_report.py the targets, the table and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the siblings below, also when this file is imported from elsewhere
    sys.path.insert(0, HERE)
from vs_ray_probes import MemorySampler, is_loopback, raw_copy_seconds, socket_addresses, walk_storage  # noqa: E402
from vs_ray_report import (  # noqa: E402
    RAY_SYSTEMS,
    SYSTEMS,
    check_targets,
    machine,
    print_report,
    same_kept,
    write_json,
)

RESULTS = os.path.join(HERE, "results", "bench_vs_ray.json")
NUM_WORKERS = 2
CHILD_TIMEOUT_S = 900
# Ray replaces a loopback node address with the machine's routable one unless it believes it runs on a laptop
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: single-machine mode); then every Ray process binds 127.0.0.1 only.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_NODE_IP_ADDRESS": "127.0.0.1",
                    "RAY_USAGE_STATS_ENABLED": "0"}


def loss_sequence(n: int) -> list[float]:
    """Return ``n`` distinct losses that go up and down (a permutation of 1.0, 1.1, ... when n <= 20)."""
    return [round(1.0 + ((7 * i + 11) % max(n, 20)) / 10, 3) for i in range(n)]


def expected_kept(losses: list[float], num_to_keep: int) -> list[float]:
    """Return the losses retention must leave on storage: the ``num_to_keep`` lowest plus the latest."""
    return sorted(set(sorted(losses)[:num_to_keep]) | {losses[-1]})


# ---------------------------------------------------------------------------------------------- the train loop


def train_loop(config: dict[str, Any]) -> None:
    """Report ``config["reports"]`` rounds; rank 0 saves ``config["nbytes"]`` bytes with torch.save each round."""
    entered = time.time()
    import importlib

    import torch

    api = importlib.import_module(config["api"])
    rank = api.get_context().get_world_rank()
    nbytes = config["nbytes"] if rank == 0 else 0
    weights = torch.randint(0, 255, (nbytes,), dtype=torch.uint8) if nbytes else None
    returns: list[float] = []  # time.time() after each report() returned
    saves: list[float] = []  # seconds each torch.save (and meta.json) took
    in_place = config.get("no_upload", False)
    for step, loss in enumerate(config["losses"]):
        # Only a rank that writes a checkpoint makes a local directory, so S=0 times report() alone.
        # NO_UPLOAD: the checkpoint is written straight into the run's own directory (as the user guide says).
        if weights is None:
            scope: Any = nullcontext("")
        elif in_place:
            scope = nullcontext(api.get_context().get_storage().build_checkpoint_path_from_name(f"ckpt_{step:06d}"))
        else:
            scope = tempfile.TemporaryDirectory(dir=config["scratch"])
        with scope as local_dir:
            checkpoint, extra = None, {}
            if weights is not None:
                if in_place:
                    os.makedirs(local_dir)
                    extra = {"checkpoint_upload_mode": api.CheckpointUploadMode.NO_UPLOAD}
                t0 = time.time()
                save_checkpoint(torch, local_dir, step, loss, weights)
                saves.append(time.time() - t0)
                checkpoint = api.Checkpoint.from_directory(local_dir)
            api.report({"loss": loss, "step": step, "entered": entered}, checkpoint=checkpoint, **extra)
        returns.append(time.time())
    if rank == 0:
        with open(config["stamps_path"], "w") as f:
            json.dump({"entered": entered, "returns": returns, "saves": saves}, f)


def save_checkpoint(torch: Any, directory: str, step: int, loss: float, weights: Any) -> None:
    """Write one checkpoint into ``directory``: the tensor with ``torch.save`` and a small ``meta.json``."""
    torch.save({"step": step, "weights": weights}, os.path.join(directory, "model.pt"))
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump({"step": step, "loss": loss}, f)


def fsync_path(path: str) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def by_hand_loop(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The loop without any checkpoint library: the same save, then fsync each file, the directory and its parent.

    Each round writes ``checkpoint_<step>`` into ``run_dir`` and makes it durable itself. A round is timed from
    before ``mkdir`` to after the last fsync. Afterwards, outside the clock, the checkpoints that retention would
    not keep (the 2 lowest losses plus the latest) are deleted, so only the write and its fsyncs are timed: the
    floor that a durable checkpoint costs on this disk.
    """
    import torch

    weights = torch.randint(0, 255, (config["nbytes"],), dtype=torch.uint8)
    kept: dict[str, float] = {}
    rounds, saves, syncs, deletes = [], [], [], []
    for step, loss in enumerate(config["losses"]):
        path = os.path.join(run_dir, f"checkpoint_{step:06d}")
        t0 = time.perf_counter()
        os.makedirs(path)
        save_checkpoint(torch, path, step, loss, weights)
        t1 = time.perf_counter()
        for name in ("model.pt", "meta.json"):
            fsync_path(os.path.join(path, name))
        fsync_path(path)
        fsync_path(run_dir)
        t2 = time.perf_counter()
        rounds.append(t2 - t0)
        saves.append(t1 - t0)
        syncs.append(t2 - t1)
        kept[path] = loss
        keep = set(sorted(kept, key=lambda p: kept[p])[:2]) | {path}
        t3 = time.perf_counter()
        for old in [p for p in kept if p not in keep]:
            shutil.rmtree(old)
            del kept[old]
        deletes.append(time.perf_counter() - t3)
    return {"rounds": rounds, "saves": saves, "fsyncs": syncs, "deletes": deletes}



# ---------------------------------------------------------------------------------------------- one run


def run_one(system: str, size_mb: int, reports: int, work: str) -> dict[str, Any]:
    """Run one configuration in this process (a fresh subprocess of the driver) and return its measures."""
    storage, scratch = os.path.join(work, "storage"), os.path.join(work, "scratch")
    os.makedirs(storage)
    os.makedirs(scratch)
    config = {"nbytes": size_mb * 1_000_000, "losses": loss_sequence(reports), "scratch": scratch,
              "stamps_path": os.path.join(work, "stamps.json"), "no_upload": system == "trainkeep-no-upload",
              "api": "ray.train" if system in RAY_SYSTEMS else "trainkeep"}
    if system == "by-hand":
        return _measure_by_hand(size_mb, config, storage)
    is_ray = system in RAY_SYSTEMS
    # Ray's socket paths live under its temp dir and must stay under 108 bytes: keep that dir short.
    ray_dir = tempfile.mkdtemp(prefix="tkr", dir="/tmp") if is_ray else ""
    try:
        return _measure(system, size_mb, config, storage, ray_dir)
    finally:
        if ray_dir:
            shutil.rmtree(ray_dir, ignore_errors=True)


def _measure(system: str, size_mb: int, config: dict[str, Any], storage: str, ray_dir: str) -> dict[str, Any]:
    is_ray = bool(ray_dir)
    sampler = MemorySampler(marker=ray_dir or None)
    sampler.start()
    t_start = time.time()
    if is_ray:
        trainer, init_s = _ray_trainer(config, storage, ray_dir)
    else:
        import trainkeep

        trainer, init_s = _trainer(trainkeep, trainkeep.DataParallelTrainer, config, storage), 0.0
    network: dict[str, Any] = {}
    fit_start = time.time()
    try:
        trainer.fit()
        fit_end = time.time()
        if is_ray:
            network = _ray_network_check(sampler)
    finally:
        if is_ray:
            import ray

            ray.shutdown()
        sampler.stop()
    with open(config["stamps_path"]) as f:
        stamps = json.load(f)
    returns = stamps["returns"]
    rounds = [b - a for a, b in zip(returns[:-1], returns[1:], strict=True)]
    on_storage, kept = walk_storage(storage)
    return {
        "system": system, "size_mb": size_mb, "reports": len(config["losses"]), "init_s": init_s,
        "fit_to_first_iteration_s": stamps["entered"] - fit_start,
        "start_to_first_iteration_s": stamps["entered"] - t_start,
        "mean_round_s": (returns[-1] - returns[0]) / (len(returns) - 1),
        "median_round_s": statistics.median(rounds), "round_s": rounds,
        "mean_save_s": statistics.fmean(stamps["saves"]) if stamps["saves"] else 0.0,
        "fit_s": fit_end - fit_start, "fit_after_last_report_s": fit_end - returns[-1],
        "peak_rss_bytes": sampler.peak_rss, "peak_processes": sampler.peak_processes,
        "storage_bytes": on_storage, "kept_losses": kept,
        "expected_kept_losses": expected_kept(config["losses"], 2) if size_mb else [], "network": network,
    }


def _measure_by_hand(size_mb: int, config: dict[str, Any], storage: str) -> dict[str, Any]:
    """Run :func:`by_hand_loop` in this process; return the measures with the keys of the other systems."""
    sampler = MemorySampler(marker=None)
    sampler.start()
    run_dir = os.path.join(storage, "bench")
    os.makedirs(run_dir)
    t0 = time.time()
    try:
        stamps = by_hand_loop(config, run_dir) if size_mb else {"rounds": [0.0], "saves": [], "fsyncs": [], "deletes": []}
    finally:
        sampler.stop()
    fit_s = time.time() - t0
    rounds = stamps["rounds"][1:]  # like the others: round k is from the end of round k-1 to the end of round k
    on_storage, kept = walk_storage(storage)
    return {
        "system": "by-hand", "size_mb": size_mb, "reports": len(config["losses"]), "init_s": 0.0,
        "fit_to_first_iteration_s": 0.0, "start_to_first_iteration_s": 0.0,
        "mean_round_s": statistics.fmean(rounds) if rounds else 0.0,
        "median_round_s": statistics.median(rounds) if rounds else 0.0, "round_s": rounds,
        "mean_save_s": statistics.fmean(stamps["saves"]) if stamps["saves"] else 0.0,
        "mean_fsync_s": statistics.fmean(stamps["fsyncs"]) if stamps["fsyncs"] else 0.0,
        "mean_untimed_delete_s": statistics.fmean(stamps["deletes"]) if stamps.get("deletes") else 0.0,
        "fit_s": fit_s, "fit_after_last_report_s": 0.0,
        "peak_rss_bytes": sampler.peak_rss, "peak_processes": sampler.peak_processes,
        "storage_bytes": on_storage, "kept_losses": kept,
        "expected_kept_losses": expected_kept(config["losses"], 2) if size_mb else [], "network": {},
    }


def _ray_trainer(config: dict[str, Any], storage: str, ray_dir: str) -> tuple[Any, float]:
    """Start Ray on loopback (checked) and return its V2 DataParallelTrainer and the seconds ray.init took."""
    import ray
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    t0 = time.time()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=max(2, os.cpu_count() or 2),
             _temp_dir=ray_dir, log_to_driver=False, logging_level="WARNING")
    init_s = time.time() - t0
    listening, _ = socket_addresses(MemorySampler(ray_dir).processes())
    if not all(is_loopback(ip) for ip in listening):
        ray.shutdown()
        raise RuntimeError(f"Ray listens beyond loopback: {sorted(listening)}; refusing to benchmark")
    return _trainer(ray.train, DataParallelTrainer, config, storage), init_s


def _trainer(api: Any, trainer_cls: Any, config: dict[str, Any], storage: str) -> Any:
    """Build ``trainer_cls`` with the benchmark's configs from ``api`` (ray.train and trainkeep spell them alike)."""
    checkpoint_config = api.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss",
                                             checkpoint_score_order="min")
    return trainer_cls(train_loop, train_loop_config=config,
                       scaling_config=api.ScalingConfig(num_workers=NUM_WORKERS),
                       run_config=api.RunConfig(name="bench", storage_path=storage,
                                                checkpoint_config=checkpoint_config))


def _ray_network_check(sampler: MemorySampler) -> dict[str, Any]:
    """Record every address Ray's processes listen on or talk to, and whether all of them are loopback."""
    listening, remote = socket_addresses(sampler.processes())
    remote |= sampler.remote_ips
    return {"listening": sorted(listening), "remote": sorted(remote),
            "loopback_only": all(is_loopback(ip) for ip in listening | remote)}



# ---------------------------------------------------------------------------------------------- the driver
def spawn(system: str, size_mb: int, reports: int, root: str) -> dict[str, Any]:
    """Run one configuration in a fresh subprocess and return its measures (or an error record)."""
    work = tempfile.mkdtemp(prefix=f"{system}-{size_mb}-", dir=root)
    out = os.path.join(work, "result.json")
    env = dict(os.environ, **RAY_LOOPBACK_ENV)
    env.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
    if system == "ray-fast":
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    cmd = [sys.executable, os.path.abspath(__file__), "--one", system, "--size-one", str(size_mb),
           "--reports", str(reports), "--work", work, "--out", out]
    load_before = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stdout + proc.stderr)[-3000:]
            return {"system": system, "size_mb": size_mb, "error": f"exit {proc.returncode}: {tail}"}
        with open(out) as f:
            return {**json.load(f), "load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0]}
    except subprocess.TimeoutExpired:
        return {"system": system, "size_mb": size_mb, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (driver), or one configuration of it (``--one``, used by the driver)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,10,100,500", help="checkpoint sizes in MB, comma-separated")
    parser.add_argument("--reports", type=int, default=20, help="report() rounds per run")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"which of {','.join(SYSTEMS)} to run")
    parser.add_argument("--out", default=RESULTS, help="where the JSON goes")
    parser.add_argument("--one", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--size-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reports < 2:
        parser.error(f"--reports must be at least 2, got {args.reports}")
    if args.one:
        result = run_one(args.one, args.size_one, args.reports, args.work)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {unknown}; allowed: {', '.join(SYSTEMS)}")
    results: list[dict[str, Any]] = []
    raw_copy: dict[str, dict[str, float]] = {}
    root = tempfile.mkdtemp(prefix="tkbench-")
    try:
        for size in sizes:
            for system in systems:
                if size == 0 and system in ("trainkeep-no-upload", "by-hand"):
                    continue  # without a checkpoint both are the plain trainkeep run, or nothing
                print(f"running {system} S={size} MB ...", file=sys.stderr, flush=True)
                results.append(spawn(system, size, args.reports, root))
            if size:
                raw_copy[str(size)] = raw_copy_seconds(size, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    targets = check_targets(results, sizes)
    report = {"machine": machine(), "reports": args.reports, "num_workers": NUM_WORKERS, "sizes_mb": sizes,
              "raw_copy": raw_copy, "results": results, "targets": targets,
              "same_checkpoints_kept": same_kept(results, sizes)}
    write_json(report, args.out)
    print_report(report, args.out)
    networks = [r["network"] for r in results if r.get("network")]
    ok = all("error" not in r for r in results) and all(n["loopback_only"] for n in networks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
