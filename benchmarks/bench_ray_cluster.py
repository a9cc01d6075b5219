"""Benchmark (issue 12): the report round on a simulated 3-node Ray cluster, trainkeep's Ray executor vs Ray Train.

Run by hand, never in tests: ``.venv/bin/python benchmarks/bench_ray_cluster.py`` (with ``PYTHONPATH=src`` or
trainkeep installed; the venv needs ``ray[train]==2.60.0``, torch and psutil). Each system runs in a fresh
subprocess that starts one Ray cluster of three nodes on this machine (``ray.cluster_utils.Cluster``: a head and
two worker nodes, each its own raylet with 2 CPUs, everything on 127.0.0.1, as in tests/ray/conftest.py), then
two fits on it, each with 2 workers placed ``SPREAD`` (so on two different nodes; checked):

- (a) S=0: ``--reports`` rounds (default 20), no checkpoint;
- (b) S=100: ``--ckpt-reports`` rounds (default 6), rank 0 writes a 100 MB torch.save checkpoint each round.

Systems: ``trainkeep`` (``DataParallelTrainer(..., executor="ray")``, ``report()`` in its default SYNC mode, so
each checkpoint is committed and fsynced before ``report()`` returns), ``ray-default`` (Ray Train 2.60's
``ray.train.v2`` DataParallelTrainer at its defaults) and ``ray-fast`` (the same with
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1``). The training function is bench_vs_ray.py's ``train_loop`` (rounds
timed on rank 0 between ``report()`` returns), wrapped to record each rank's Ray node. Storage is a local
directory: every simulated node shares this machine's disk. Ray's sockets are watched during the whole run and
the run refuses to go on if one listens beyond loopback. Prints per-round medians, trainkeep / Ray(best) and the
two targets of issue 12; writes benchmarks/results/bench_ray_cluster.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_vs_ray as bvr  # noqa: E402  (reused: train_loop, socket checks, storage walk, raw copy, machine)

RESULTS = os.path.join(HERE, "results", "bench_ray_cluster.json")
SYSTEMS = ("ray-default", "ray-fast", "trainkeep")
NUM_WORKERS = 2
SIZES = (0, 100)
CHILD_TIMEOUT_S = 420
# the same node settings as tests/ray/conftest.py: three nodes of 2 CPUs, loopback only, no dashboard
NODE_ARGS = {"node_ip_address": "127.0.0.1", "num_cpus": 2, "include_dashboard": False,
             "object_store_memory": 80 * 1024 * 1024}
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 0}
RAY_ENV = {**bvr.RAY_LOOPBACK_ENV, "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def cluster_loop(config: dict[str, Any]) -> None:
    """Record this rank's Ray node, then run bench_vs_ray's training loop."""
    import ray

    api = importlib.import_module(config["api"])
    rank = api.get_context().get_world_rank()
    with open(os.path.join(config["nodes_dir"], f"rank{rank}"), "w") as f:
        f.write(ray.get_runtime_context().get_node_id())
    bvr.train_loop(config)


class NetWatcher(bvr.MemorySampler):
    """Every second, record the addresses that Ray's processes (our descendants and any naming the marker,
    the cluster's temp dir) listen on and talk to."""

    def __init__(self, marker: str) -> None:
        super().__init__(marker)
        self.listening: set[str] = set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.check()
            self._stop_event.wait(1.0)

    def check(self) -> set[str]:
        self._scan_for_marker()
        listening, remote = bvr.socket_addresses(self.processes())
        self.listening |= listening
        self.remote_ips |= remote
        return listening

    def summary(self) -> dict[str, Any]:
        return {"listening": sorted(self.listening), "remote": sorted(self.remote_ips),
                "loopback_only": all(bvr.is_loopback(ip) for ip in self.listening | self.remote_ips)}


# ---------------------------------------------------------------------------------------------- one system


def run_system(system: str, reports: dict[int, int], work: str) -> dict[str, Any]:
    """Start the 3-node cluster once, run every size on it, and return the measures (in a fresh subprocess)."""
    tmp = tempfile.mkdtemp(prefix="tkc", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    os.makedirs(os.path.join(tmp, "ray"))
    os.environ["RAY_TMPDIR"] = tmp
    import ray
    from ray.cluster_utils import Cluster

    watcher = NetWatcher(tmp)
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "temp_dir": os.path.join(tmp, "ray"), "_system_config": SYSTEM_CONFIG})
    try:
        for _ in range(2):
            cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="WARNING",
                 log_to_driver=False)
        cluster_start_s = time.time() - t0
        listening = watcher.check()
        if not listening or not all(bvr.is_loopback(ip) for ip in listening):
            raise RuntimeError(f"Ray listens beyond loopback (or not at all): {sorted(listening)}; refusing to go on")
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        watcher.start()
        runs = [_fit(system, size, n, os.path.join(work, f"s{size}")) for size, n in reports.items()]
    finally:
        if watcher.is_alive():
            watcher.stop()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"system": system, "cluster_start_s": cluster_start_s, "alive_nodes": nodes, "runs": runs,
            "network": watcher.summary()}


def _fit(system: str, size_mb: int, reports: int, work: str) -> dict[str, Any]:
    storage, scratch, nodes_dir = (os.path.join(work, d) for d in ("storage", "scratch", "nodes"))
    for d in (storage, scratch, nodes_dir):
        os.makedirs(d)
    config = {"nbytes": size_mb * 1_000_000, "losses": bvr.loss_sequence(reports), "scratch": scratch,
              "stamps_path": os.path.join(work, "stamps.json"), "nodes_dir": nodes_dir,
              "api": "trainkeep" if system == "trainkeep" else "ray.train"}
    trainer = _trainer(system, config, storage, f"bench_s{size_mb}")
    load_before = os.getloadavg()
    fit_start = time.time()
    trainer.fit()
    fit_s = time.time() - fit_start
    with open(config["stamps_path"]) as f:
        stamps = json.load(f)
    returns = stamps["returns"]
    rounds = [b - a for a, b in zip(returns[:-1], returns[1:], strict=True)]
    placement = {}
    for name in sorted(os.listdir(nodes_dir)):
        with open(os.path.join(nodes_dir, name)) as f:
            placement[name] = f.read()
    on_storage, kept = bvr.walk_storage(storage)
    return {"size_mb": size_mb, "reports": reports, "median_round_s": statistics.median(rounds),
            "mean_round_s": statistics.fmean(rounds), "round_s": rounds,
            "mean_save_s": statistics.fmean(stamps["saves"]) if stamps["saves"] else 0.0,
            "fit_to_first_iteration_s": stamps["entered"] - fit_start, "fit_s": fit_s,
            "placement": placement, "distinct_nodes": len(set(placement.values())),
            "storage_bytes": on_storage, "kept_losses": kept,
            "expected_kept_losses": bvr.expected_kept(config["losses"], 2) if size_mb else [],
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def _trainer(system: str, config: dict[str, Any], storage: str, name: str) -> Any:
    if system == "trainkeep":
        import trainkeep as api

        cls, extra = api.DataParallelTrainer, {"executor": "ray"}
    else:
        import ray.train as api
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as cls

        extra = {}
    checkpoint_config = api.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss",
                                             checkpoint_score_order="min")
    return cls(cluster_loop, train_loop_config=config,
               scaling_config=api.ScalingConfig(num_workers=NUM_WORKERS, placement_strategy="SPREAD"),
               run_config=api.RunConfig(name=name, storage_path=storage, checkpoint_config=checkpoint_config),
               **extra)


# ---------------------------------------------------------------------------------------------- the driver


def spawn(system: str, reports: dict[int, int], root: str) -> dict[str, Any]:
    """Run one system in a fresh subprocess (its own cluster) and return its measures, or an error record."""
    work = tempfile.mkdtemp(prefix=f"{system}-", dir=root)
    out = os.path.join(work, "result.json")
    env = dict(os.environ, **RAY_ENV)
    env.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
    if system == "ray-fast":
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    # the Ray workers import bench_vs_ray (the loop) and trainkeep by name
    src = os.path.join(os.path.dirname(HERE), "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, src, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--one", system, "--reports", str(reports[0]),
           "--ckpt-reports", str(reports[100]), "--work", work, "--out", out]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        if proc.returncode != 0 or not os.path.exists(out):
            return {"system": system, "error": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"}
        with open(out) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        return {"system": system, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def median_of(results: list[dict[str, Any]], system: str, size: int) -> float | None:
    for r in results:
        if r["system"] == system and "error" not in r:
            return next((run["median_round_s"] for run in r["runs"] if run["size_mb"] == size), None)
    return None


def ray_best(results: list[dict[str, Any]], size: int) -> tuple[float | None, str]:
    values = {s: v for s in SYSTEMS[:2] if (v := median_of(results, s, size)) is not None}
    best = min(values, key=lambda s: values[s]) if values else ""
    return (values[best] if best else None), best


def check_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12: the S=0 round at most 1/50 of Ray(best)'s; the 100 MB round no slower than Ray(best)'s."""
    rows = []
    for name, size, limit in (("round, no checkpoint", 0, 1 / 50), ("round, 100 MB checkpoint (durable)", 100, 1.0)):
        ours, (theirs, against) = median_of(results, "trainkeep", size), ray_best(results, size)
        ratio = ours / theirs if ours is not None and theirs else None
        rows.append({"target": name, "size_mb": size, "trainkeep_s": ours, "ray_best_s": theirs,
                     "ray_config": against, "limit": limit, "ratio": ratio,
                     "met": ratio is not None and ratio <= limit})
    return rows


def print_table(results: list[dict[str, Any]], targets: list[dict[str, Any]]) -> None:
    print(f"{'S MB':>5} {'system':<12}{'median s':>11}{'mean s':>11}{'save s':>9}{'fit->1st s':>11}{'fit s':>8}"
          f"{'nodes':>6}{'storage MB':>11}  kept losses")
    for size in SIZES:
        for r in results:
            if "error" in r:
                if size == SIZES[0]:
                    print(f"{'':>5} {r['system']:<12} ERROR {r['error'][-600:]}")
                continue
            for run in (x for x in r["runs"] if x["size_mb"] == size):
                print(f"{size:>5} {r['system']:<12}{run['median_round_s']:>11.5f}{run['mean_round_s']:>11.5f}"
                      f"{run['mean_save_s']:>9.3f}{run['fit_to_first_iteration_s']:>11.2f}{run['fit_s']:>8.1f}"
                      f"{run['distinct_nodes']:>6}{run['storage_bytes'] / 1e6:>11.1f}  {run['kept_losses']}")
    for t in targets:
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.4g}"
        print(f"target {t['target']:<36} trainkeep/Ray({t['ray_config'] or '-'}) {ratio:>8} "
              f"(limit {t['limit']:.3g}): {'met' if t['met'] else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=20, help="report() rounds without a checkpoint")
    parser.add_argument("--ckpt-reports", type=int, default=6, help="report() rounds with a 100 MB checkpoint")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"which of {','.join(SYSTEMS)} to run")
    parser.add_argument("--out", default=RESULTS, help="where the JSON goes")
    parser.add_argument("--one", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.reports, args.ckpt_reports) < 2:
        parser.error("--reports and --ckpt-reports must be at least 2")
    reports = {0: args.reports, 100: args.ckpt_reports}
    if args.one:
        result = run_system(args.one, reports, args.work)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return 0
    systems = [s for s in args.systems.split(",") if s]
    if unknown := sorted(set(systems) - set(SYSTEMS)):
        parser.error(f"--systems: unknown {unknown}; allowed: {', '.join(SYSTEMS)}")
    results: list[dict[str, Any]] = []
    root = tempfile.mkdtemp(prefix="tkcbench-")
    started, load_start = time.time(), os.getloadavg()
    try:
        for system in systems:
            print(f"running {system} (3-node cluster, S=0 x{reports[0]}, S=100 x{reports[100]}) ...",
                  file=sys.stderr, flush=True)
            results.append(spawn(system, reports, root))
        raw_copy = bvr.raw_copy_seconds(100, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    targets = check_targets(results)
    report = {"machine": bvr.machine(), "storage": "local directory; all three simulated nodes share this disk",
              "num_workers": NUM_WORKERS, "placement_strategy": "SPREAD", "nodes": 3, "reports": reports,
              "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "total_s": time.time() - started,
              "raw_copy_100mb": raw_copy, "results": results, "targets": targets}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print_table(results, targets)
    print(f"plain copy of one 100 MB file, without and with fsync, s: {raw_copy}")
    ok_runs = [r for r in results if "error" not in r]
    print(f"ray sockets loopback only in every run: {all(r['network']['loopback_only'] for r in ok_runs)} "
          f"(listening {sorted({ip for r in ok_runs for ip in r['network']['listening']})}, "
          f"peers {sorted({ip for r in ok_runs for ip in r['network']['remote']})})")
    print(f"load average at start {load_start}, at end {report['loadavg_end']}; total {report['total_s']:.0f} s")
    print(f"wrote {args.out}")
    return 0 if len(ok_runs) == len(results) and all(r["network"]["loopback_only"] for r in ok_runs) else 1


if __name__ == "__main__":
    sys.exit(main())
