"""Probes for bench_vs_ray.py: memory and processes, sockets, bytes on storage, and the medium's own speed.

:class:`MemorySampler` sums the RSS of the driver, every process it started and (for Ray) every process that
names Ray's temp dir; :func:`socket_addresses` and :func:`is_loopback` check where Ray listens and talks;
:func:`walk_storage` counts what a run left; :func:`raw_copy_seconds` times a plain copy without and with fsync.
Also used by bench_ray_cluster.py (through bench_vs_ray's names).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import threading
import time

import psutil

SAMPLE_EVERY_S = 0.05


class MemorySampler(threading.Thread):
    """Sum the RSS of this process, its descendants and any process naming ``marker`` every ~50 ms."""

    def __init__(self, marker: str | None) -> None:
        super().__init__(daemon=True)
        self.marker, self.me, self.peak_rss, self.peak_processes = marker, psutil.Process(), 0, 0
        self.extra: dict[int, psutil.Process] = {}  # processes naming the marker, outside our tree
        self.remote_ips: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        last_scan = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            if self.marker and now - last_scan > 1.0:
                self._scan_for_marker()
                last_scan = now
            self.sample()
            self._stop_event.wait(SAMPLE_EVERY_S)

    def processes(self) -> list[psutil.Process]:
        """Return the processes to account: this one, its descendants, and the marked ones with theirs."""
        procs = {self.me.pid: self.me}
        for root in [self.me, *self.extra.values()]:
            try:
                procs[root.pid] = root
                procs.update({p.pid: p for p in root.children(recursive=True)})
            except psutil.Error:
                continue
        return list(procs.values())

    def sample(self) -> None:
        total, count = 0, 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
                count += 1
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, total)
        self.peak_processes = max(self.peak_processes, count)

    def _scan_for_marker(self) -> None:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if self.marker and self.marker in cmdline:
                self.extra.setdefault(proc.pid, proc)
        self.remote_ips |= socket_addresses(self.processes())[1]

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def socket_addresses(procs: list[psutil.Process]) -> tuple[set[str], set[str]]:
    """Return (listening local IPs, connected remote IPs) of the inet sockets of ``procs``."""
    listening, remote = set(), set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                listening.add(conn.laddr.ip)
            if conn.raddr:
                remote.add(conn.raddr.ip)
    return listening, remote


def is_loopback(ip: str) -> bool:
    """Return whether ``ip`` (v4, v6 or v4-mapped v6) is a loopback address."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def walk_storage(root: str) -> tuple[int, list[float]]:
    """Return the bytes of the regular files under ``root`` and the losses in its checkpoints' meta.json."""
    total, losses = 0, []
    for dirpath, _dirs, files in os.walk(root):
        paths = [os.path.join(dirpath, name) for name in files]
        total += sum(os.path.getsize(p) for p in paths if os.path.isfile(p) and not os.path.islink(p))
        if "meta.json" in files:
            with open(os.path.join(dirpath, "meta.json")) as f:
                losses.append(json.load(f)["loss"])
    return total, sorted(losses)


def raw_copy_seconds(size_mb: int, root: str) -> dict[str, float]:
    """Time a plain copy of a just-written S MB file, without and with fsync: the medium's limits here."""
    out, src, dest = {}, os.path.join(root, "raw_src"), os.path.join(root, "raw_dest")
    for key in ("copy_s", "copy_fsync_s"):
        with open(src, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1_000_000))
        t0 = time.perf_counter()
        shutil.copyfile(src, dest)
        if key == "copy_fsync_s":
            with open(dest, "rb") as f:
                os.fsync(f.fileno())
        out[key] = time.perf_counter() - t0
        os.unlink(src)
        os.unlink(dest)
    return out
