"""How much persisting a checkpoint costs, against the raw limit of this machine, in one run.

For checkpoints of 10 MB, 100 MB and 1 GB (8 files each, written once with os.urandom), it times:

  (a) baseline   shutil.copyfile of the 8 files, fsync of each file and of the directory
      baseline_parallel   the same, 4 files at a time (trainkeep copies 4 at a time too): shown for reference
  (b) sync       trainkeep CheckpointManager.report (copy in the kernel, checksums, manifest, index, history)
  (c) handoff    the same report with the source handed over on the same filesystem (put_tree(move=True), as
                 report(delete_local_checkpoint_after_upload=True) does); sources made and synced untimed
  (c') handoff, dirty   the same with sources just written (not yet on disk): the fsync pays their writeback
  (d) async      how long report() blocks with checkpoint_upload_mode=ASYNC, through DataParallelTrainer
  S3             trainkeep's upload (FsspecStorage.put_tree) against a plain s3fs.put of the same files, to a
                 moto server on 127.0.0.1 (a subprocess), as throughput

Page caches are never dropped; each variant runs several times, in rotating order, and the median is kept.
Peak RSS growth is measured in a fresh process that persists the checkpoint once. Results are printed as ratios to the
baseline and written to benchmarks/results/bench_persist.json. Targets: (b) <= 1.1x at 1 GB, (c) <= 0.05x,
(d) <= 0.05x of (b), S3 >= 0.8x of s3fs.put.

    python benchmarks/bench_persist.py              # 10 MB, 100 MB, 1 GB
    python benchmarks/bench_persist.py --quick      # 10 MB and 100 MB
    python benchmarks/bench_persist.py --sizes 100  # sizes in MB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

import trainkeep as tk
from trainkeep._internal.storage import FsspecStorage, list_source_files

MB = 1_000_000
FILES = 8
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_persist.json")


def rss_growth_in_child(kind: str, src: str, target: str) -> int:
    """Return how much the RSS of a fresh process rises while it persists ``src`` once (bytes, peak - start).

    ``kind``: "sync" (CheckpointManager.report into run dir ``target``), "s3_trainkeep" or "s3_s3fs_put"
    (``target`` = "<endpoint> <bucket/prefix>").
    """
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", kind, src, target],
                         capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


class PeakRSS:
    """Sample this process's RSS every 2 ms while active; ``growth`` is the peak minus the RSS at the start."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


def rss_child(kind: str, src: str, target: str) -> None:
    """Persist ``src`` once as ``kind`` says; print the RSS growth in bytes (see rss_growth_in_child)."""
    files = list_source_files(src)
    if kind == "sync":
        manager = tk.CheckpointManager(target)
        checkpoint = tk.Checkpoint.from_directory(src)
        with PeakRSS() as rss:
            manager.report({"variant": "rss"}, checkpoint=checkpoint)
        manager.close()
    else:
        import s3fs

        endpoint, prefix = target.split(" ")
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, anon=False,
                               client_kwargs={"region_name": "us-east-1"})
        fs.ls(prefix.split("/")[0])  # open the client before measuring
        with PeakRSS() as rss:
            if kind == "s3_trainkeep":
                FsspecStorage(fs).put_tree(src, prefix, files)
            else:
                fs.put([os.path.join(src, f) for f in files], [f"{prefix}/{f}" for f in files])
    print(json.dumps(rss.growth))


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_sources(root: str, total: int) -> str:
    src = os.path.join(root, f"src_{total // MB}MB")
    os.makedirs(src)
    for i in range(FILES):
        with open(os.path.join(src, f"shard_{i}.bin"), "wb") as f:
            left = total // FILES
            while left:
                chunk = os.urandom(min(left, 16 * 1024 * 1024))
                f.write(chunk)
                left -= len(chunk)
    os.sync()
    return src


class LocalVariants:
    """The local variants for one size; each call returns the seconds of one timed run."""

    def __init__(self, root: str, src: str) -> None:
        self.root, self.src, self.files = root, src, list_source_files(src)
        self.manager = tk.CheckpointManager(os.path.join(root, "run"))
        self.count = 0

    def _fresh(self, tag: str) -> str:
        self.count += 1
        return os.path.join(self.root, f"{tag}_{self.count}")

    def baseline(self) -> float:
        dest = self._fresh("baseline")
        os.makedirs(dest)
        start = time.perf_counter()
        for rel in self.files:
            shutil.copyfile(os.path.join(self.src, rel), os.path.join(dest, rel))
            fsync_path(os.path.join(dest, rel))
        fsync_path(dest)
        seconds = time.perf_counter() - start
        shutil.rmtree(dest)
        return seconds

    def baseline_parallel(self) -> float:
        """The same copies and fsyncs as ``baseline``, 4 files at a time: the raw limit with parallelism."""
        dest = self._fresh("baseline_parallel")
        os.makedirs(dest)

        def one(rel: str) -> None:
            shutil.copyfile(os.path.join(self.src, rel), os.path.join(dest, rel))
            fsync_path(os.path.join(dest, rel))

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, self.files))
        fsync_path(dest)
        seconds = time.perf_counter() - start
        shutil.rmtree(dest)
        return seconds

    def sync(self) -> float:
        start = time.perf_counter()
        self.manager.report({"variant": "sync"}, checkpoint=tk.Checkpoint.from_directory(self.src))
        return time.perf_counter() - start

    def handoff(self, dirty: bool = False) -> float:
        handed = self._fresh("handoff")
        shutil.copytree(self.src, handed)
        if not dirty:
            os.sync()
        start = time.perf_counter()
        self._report_moved(handed)
        seconds = time.perf_counter() - start
        shutil.rmtree(handed, ignore_errors=True)
        return seconds

    def handoff_dirty(self) -> float:
        return self.handoff(dirty=True)

    def _report_moved(self, src: str) -> None:
        """What report(delete_local_checkpoint_after_upload=True) does: stage, move the files in, commit."""
        manager = self.manager
        metrics, name = manager.validate_report({"variant": "handoff"}, tk.Checkpoint.from_directory(src), None)
        assert name is not None
        staged = manager.stage(name)
        put = manager.storage.put_tree(src, staged.path, list_source_files(src), move=True)
        staged.commit(metrics, put.entries, put.stats)

    def close(self) -> None:
        self.manager.close()


def small_commit(root: str, rounds: int) -> dict[str, Any]:
    """Time a SYNC commit of a 1 KiB checkpoint against one fsync of a new 1 KiB file, alternating (issue 15).

    The fsync is the unit a commit cannot go below: a commit makes a new file durable and then the manifest
    that names it. Both are measured in the same loop, so the ratio holds under the load of the moment.
    Where /dev/shm is a tmpfs, the same commit into a run there (fsync costs nothing on tmpfs) is timed in the
    same loop too: the part of a commit that is not waiting for the disk.
    """
    work = tempfile.mkdtemp(prefix="small_", dir=root)
    src = os.path.join(work, "src")
    os.makedirs(src)
    with open(os.path.join(src, "state.bin"), "wb") as f:
        f.write(os.urandom(1024))
    manager = tk.CheckpointManager(os.path.join(work, "run"), checkpoint_config=tk.CheckpointConfig(num_to_keep=2))
    shm = tempfile.mkdtemp(prefix="small_", dir="/dev/shm") if _fs_type("/dev/shm") == "tmpfs" else None
    in_memory = (tk.CheckpointManager(os.path.join(shm, "run"), checkpoint_config=tk.CheckpointConfig(num_to_keep=2))
                 if shm else None)
    fsyncs, commits, memory_commits = [], [], []
    try:
        for i in range(rounds):
            path = os.path.join(work, f"probe_{i}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, os.urandom(1024))
            start = time.perf_counter()
            os.fsync(fd)
            fsyncs.append(time.perf_counter() - start)
            os.close(fd)
            os.unlink(path)
            start = time.perf_counter()
            manager.report({"i": i}, checkpoint=tk.Checkpoint.from_directory(src))
            commits.append(time.perf_counter() - start)
            if in_memory is not None:
                start = time.perf_counter()
                in_memory.report({"i": i}, checkpoint=tk.Checkpoint.from_directory(src))
                memory_commits.append(time.perf_counter() - start)
    finally:
        manager.close()
        if in_memory is not None:
            in_memory.close()
        shutil.rmtree(work, ignore_errors=True)
        if shm:
            shutil.rmtree(shm, ignore_errors=True)
    memory = statistics.median(memory_commits) if memory_commits else None
    return {"fsync_median_s": statistics.median(fsyncs), "commit_median_s": statistics.median(commits),
            "ratio": statistics.median(commits) / statistics.median(fsyncs), "rounds": rounds,
            "tmpfs_commit_median_s": memory,
            "tmpfs_ratio": memory / statistics.median(fsyncs) if memory is not None else None,
            "load_avg_1m": os.getloadavg()[0]}


def shard_loop(config: dict[str, Any]) -> list[tuple[float, float]]:
    """Each rank reports its own shard (SYNC) in the same round, after a metrics-only round as a barrier."""
    import time as _time

    import trainkeep as _tk

    rank = _tk.get_context().get_world_rank()
    spans = []
    for i in range(config["rounds"]):
        _tk.report({"barrier": i})
        start = _time.time()
        _tk.report({"round": i}, checkpoint=_tk.Checkpoint.from_directory(config["srcs"][rank]))
        spans.append((start, _time.time()))
    with open(os.path.join(config["out"], f"spans_{rank}.json"), "w") as f:
        json.dump(spans, f)
    return spans


def shards(root: str, ranks: int, total: int, rounds: int) -> dict[str, Any]:
    """Time rounds in which each of ``ranks`` workers reports its own ``total``-byte shard, against plain copies.

    A round's time is from the first rank's report() call to the last rank's return; the plain side copies the
    same ``ranks`` files in ``ranks`` threads (``shutil.copyfile``, fsync of each file and of the directory).
    Issue 15 target 5: the round's throughput at least 0.8 of the plain copies'.
    """
    work = tempfile.mkdtemp(prefix="shards_", dir=root)
    srcs = []
    for rank in range(ranks):
        src = os.path.join(work, f"src_{rank}")
        os.makedirs(src)
        with open(os.path.join(src, f"shard_{rank}.bin"), "wb") as f:
            for _ in range(total // (10 * MB)):
                f.write(os.urandom(10 * MB))
        srcs.append(src)
    os.sync()
    plain = []
    for i in range(rounds):
        dest = os.path.join(work, f"plain_{i}")
        os.makedirs(dest)

        def one(rank: int, dest: str = dest) -> None:
            target = os.path.join(dest, f"shard_{rank}.bin")
            shutil.copyfile(os.path.join(srcs[rank], f"shard_{rank}.bin"), target)
            fsync_path(target)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=ranks) as pool:
            list(pool.map(one, range(ranks)))
        fsync_path(dest)
        plain.append(time.perf_counter() - start)
        shutil.rmtree(dest)
    trainer = tk.DataParallelTrainer(
        shard_loop, train_loop_config={"srcs": srcs, "rounds": rounds, "out": work},
        scaling_config=tk.ScalingConfig(num_workers=ranks),
        run_config=tk.RunConfig(name="shards", storage_path=os.path.join(work, "runs"),
                                checkpoint_config=tk.CheckpointConfig(num_to_keep=1)))
    trainer.fit()
    per_rank = []
    for rank in range(ranks):
        with open(os.path.join(work, f"spans_{rank}.json")) as f:
            per_rank.append(json.load(f))
    rounds_s = [max(spans[i][1] for spans in per_rank) - min(spans[i][0] for spans in per_rank)
                for i in range(rounds)]
    shutil.rmtree(work, ignore_errors=True)
    round_median, plain_median = statistics.median(rounds_s), statistics.median(plain)
    return {"ranks": ranks, "shard_bytes": total, "round_s": rounds_s, "plain_s": plain,
            "round_median_s": round_median, "plain_median_s": plain_median,
            "throughput_ratio": plain_median / round_median, "load_avg_1m": os.getloadavg()[0]}


def run_rotating(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Run every variant ``repeats`` times, rotating their order each round; return the medians."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(variants[name]())
    return {n: {"median_s": statistics.median(times[n]), "runs_s": times[n]} for n in names}


def async_block_times(root: str, src: str, reports: int, gap_s: float) -> list[float]:
    """Return how long each report() blocked in ASYNC mode, in a 1-worker DataParallelTrainer."""

    def loop(config: dict[str, Any]) -> list[float]:
        import time as _time

        import trainkeep as _tk

        blocked = []
        for i in range(config["reports"]):
            checkpoint = _tk.Checkpoint.from_directory(config["src"])
            start = _time.perf_counter()
            _tk.report({"i": i}, checkpoint=checkpoint,
                       checkpoint_upload_mode=_tk.CheckpointUploadMode.ASYNC,
                       delete_local_checkpoint_after_upload=False)
            blocked.append(_time.perf_counter() - start)
            _time.sleep(config["gap_s"])  # let the upload finish: measure the hand-off, not a full queue
        return blocked

    trainer = tk.DataParallelTrainer(
        loop, train_loop_config={"src": src, "reports": reports, "gap_s": gap_s},
        scaling_config=tk.ScalingConfig(num_workers=1),
        run_config=tk.RunConfig(name="async_run", storage_path=root))
    return list(trainer.fit().return_value)


class MotoServer:
    """A moto S3 server in a subprocess on 127.0.0.1 (so it does not share this process's GIL)."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def s3_variants(fs: Any, src: str, bucket: str) -> dict[str, Callable[[], float]]:
    files = list_source_files(src)
    counter = iter(range(1_000_000))

    def timed(upload: Callable[[str], None]) -> float:
        prefix = f"{bucket}/run_{next(counter)}"
        start = time.perf_counter()
        upload(prefix)
        seconds = time.perf_counter() - start
        fs.rm(prefix, recursive=True)
        return seconds

    def trainkeep_put(prefix: str) -> None:
        FsspecStorage(fs).put_tree(src, prefix, files)

    def s3fs_put(prefix: str) -> None:
        fs.put([os.path.join(src, f) for f in files], [f"{prefix}/{f}" for f in files])

    return {"s3_trainkeep": lambda: timed(trainkeep_put), "s3_s3fs_put": lambda: timed(s3fs_put)}


def bench_size(root: str, total: int, args: argparse.Namespace, s3: Any) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=f"size_{total // MB}MB_", dir=root)
    src = make_sources(work, total)
    repeats = args.repeats or (5 if total <= 100 * MB else 3)
    local = LocalVariants(work, src)
    try:
        out = run_rotating({"baseline": local.baseline, "baseline_parallel": local.baseline_parallel,
                            "sync": local.sync, "handoff": local.handoff, "handoff_dirty": local.handoff_dirty},
                           repeats)
    finally:
        local.close()
    if not args.no_async:
        gap = out["sync"]["median_s"] * 2 + 0.1
        blocked = async_block_times(work, src, max(3, repeats), gap)
        out["async"] = {"median_s": statistics.median(blocked), "runs_s": blocked}
    rss = {} if args.no_rss else {"sync": rss_growth_in_child("sync", src, os.path.join(work, "rss_run"))}
    if s3 is not None:
        fs, bucket, endpoint = s3
        out.update(run_rotating(s3_variants(fs, src, bucket), repeats))
        for kind in ("s3_trainkeep", "s3_s3fs_put"):
            rss[kind] = rss_growth_in_child(kind, src, f"{endpoint} {bucket}/rss_{kind}")
            fs.rm(f"{bucket}/rss_{kind}", recursive=True)
    out["peak_rss_growth_bytes"] = rss
    out["load_avg_1m"] = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)
    return out


def report_lines(total: int, r: dict[str, Any]) -> list[str]:
    base = r["baseline"]["median_s"]
    lines = [f"\n== {total // MB} MB in {FILES} files (load average {r.get('load_avg_1m', 0):.1f}) ==",
             f"{'variant':<16}{'median':>10}{'MB/s':>9}{'ratio':>10}  target"]
    targets = {"sync": ("x baseline", 1.1 if total >= 1000 * MB else None), "handoff": ("x baseline", 0.05)}
    for name in ("baseline", "baseline_parallel", "sync", "handoff", "handoff_dirty", "async"):
        if name not in r:
            continue
        m = r[name]["median_s"]
        ratio = m / base if name != "async" else m / r["sync"]["median_s"]
        goal = ""
        if name == "async":
            goal = f"<= 0.05 of sync  {'ok' if ratio <= 0.05 else 'MISSED'}"
        elif name in targets and targets[name][1] is not None:
            limit = targets[name][1]
            goal = f"<= {limit}  {'ok' if ratio <= limit else 'MISSED'}"
        label = "x sync" if name == "async" else "x"
        lines.append(f"{name:<16}{m * 1000:>8.1f}ms{total / MB / m:>9.0f}{ratio:>8.3f}{label:<6}  {goal}")
    persist = r["sync"]["median_s"] / r["baseline_parallel"]["median_s"]
    lines.append(f"persist step (sync) / plain parallel copy+fsync: {persist:.3f} (issue 15 target <= 1.1: "
                 f"{'ok' if persist <= 1.1 else 'MISSED'})")
    if "s3_trainkeep" in r:
        tk_rate = total / MB / r["s3_trainkeep"]["median_s"]
        put_rate = total / MB / r["s3_s3fs_put"]["median_s"]
        ratio = tk_rate / put_rate
        lines.append(f"S3 (moto): trainkeep {tk_rate:.0f} MB/s, s3fs.put {put_rate:.0f} MB/s, ratio {ratio:.2f} "
                     f"(target >= 0.8: {'ok' if ratio >= 0.8 else 'MISSED'})")
    growth = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in r["peak_rss_growth_bytes"].items())
    if growth:
        lines.append(f"peak RSS growth of a fresh process persisting it once: {growth}")
    return lines


def start_s3(args: argparse.Namespace) -> tuple[Any, Any] | None:
    if args.no_s3:
        return None
    import s3fs

    server = MotoServer()
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=server.url, anon=False,
                           client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
    fs.call_s3("create_bucket", Bucket="bench")
    return server, (fs, "bench", server.url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="checkpoint sizes in MB, comma-separated")
    parser.add_argument("--quick", action="store_true", help="10 MB and 100 MB only")
    parser.add_argument("--repeats", type=int, default=0, help="runs per variant (default 5, 3 at >100 MB)")
    parser.add_argument("--root", default=None, help="directory for sources and runs (default: a temp dir)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) comparison")
    parser.add_argument("--no-async", action="store_true", help="skip the ASYNC trainer measurement")
    parser.add_argument("--small-rounds", type=int, default=30,
                        help="1 KiB commits timed against one fsync each (0: skip)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak RSS measurement")
    parser.add_argument("--shards", type=int, default=0, metavar="MB",
                        help="also time 4 ranks each reporting a shard of MB in one round (issue 15: 250)")
    parser.add_argument("--out", default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--rss-child", nargs=3, metavar=("KIND", "SRC", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup below (moto server, temp files)
    sizes = [10, 100] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    root = tempfile.mkdtemp(prefix="bench_persist_", dir=args.root)
    started = start_s3(args)
    results: dict[str, Any] = {}
    try:
        if args.small_rounds:
            results["1KiB_commit"] = small_commit(root, args.small_rounds)
            c = results["1KiB_commit"]
            print(f"\n== 1 KiB SYNC commit vs one fsync (load average {c['load_avg_1m']:.1f}) ==\n"
                  f"commit {c['commit_median_s'] * 1e3:.2f} ms, fsync {c['fsync_median_s'] * 1e3:.2f} ms, ratio "
                  f"{c['ratio']:.2f} (issue 15 target <= 3: {'ok' if c['ratio'] <= 3 else 'MISSED'})", flush=True)
            if c["tmpfs_commit_median_s"] is not None:
                print(f"the same commit on tmpfs (no disk wait): {c['tmpfs_commit_median_s'] * 1e3:.2f} ms = "
                      f"{c['tmpfs_ratio']:.2f} fsyncs of the disk", flush=True)
        if args.shards:
            r = results[f"shards_4x{args.shards}MB"] = shards(root, 4, args.shards * MB, args.repeats or 3)
            print(f"\n== 4 ranks x {args.shards} MB shards in one SYNC round (load average {r['load_avg_1m']:.1f}) "
                  f"==\nround {r['round_median_s'] * 1e3:.0f} ms, 4 parallel plain copies+fsync "
                  f"{r['plain_median_s'] * 1e3:.0f} ms, throughput ratio {r['throughput_ratio']:.2f} "
                  f"(issue 15 target >= 0.8: {'ok' if r['throughput_ratio'] >= 0.8 else 'MISSED'})", flush=True)
        for size in sizes:
            results[f"{size}MB"] = bench_size(root, size * MB, args, started[1] if started else None)
            print("\n".join(report_lines(size * MB, results[f"{size}MB"])), flush=True)
    finally:
        if started:
            started[0].stop()
        shutil.rmtree(root, ignore_errors=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "filesystem": _fs_type(root)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "files_per_checkpoint": FILES, "results": results}, f, indent=1)
    print(f"\nwrote {args.out}")


def _fs_type(path: str) -> str:
    best = ("", "?")
    for part in psutil.disk_partitions(all=True):
        if path.startswith(part.mountpoint) and len(part.mountpoint) > len(best[0]):
            best = (part.mountpoint, part.fstype)
    return best[1]


if __name__ == "__main__":
    main()
