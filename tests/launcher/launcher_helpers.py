"""Helpers of the launcher tests: free loopback ports, running the test script under torchrun or as srun tasks,
reading what each rank logged, and the listening sockets of this machine (/proc/net/tcp)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = str(Path(__file__).with_name("launched_script.py"))
SRC = str(Path(__file__).parents[2] / "src")


def free_port_pair() -> int:
    """Return a loopback port P such that P and P + 1 (trainkeep's default port) are both free now.

    Drawn below Linux's ephemeral range (32768 and up), so that no outgoing connection of torchrun's own can
    take either port between this check and the bind.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def script_env(**extra: str) -> dict[str, str]:
    """Return the environment of a launched script: this worktree's sources first, no launcher variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "TORCHELASTIC_")) and k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TRAINKEEP_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def torchrun(args: dict[str, Any], *flags: str, port: int | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the test script under torchrun with 2 processes on 127.0.0.1 (``--master-port port``, default a free
    one); return the finished process."""
    port = port or free_port_pair()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "--monitor-interval", "0.2", *flags, SCRIPT, json.dumps(args)]
    return subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=timeout)


def srun_like(args: dict[str, Any], world_size: int = 2, timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Run the test script as ``world_size`` plain processes with the variables srun sets (and MASTER_*)."""
    port = free_port_pair()
    procs = []
    for rank in range(world_size):
        env = script_env(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world_size), SLURM_LOCALID=str(rank),
                         SLURM_NODEID="0", SLURM_JOB_ID="4242", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, SCRIPT, json.dumps(args)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return results


def read_log(out: Path, rank: int) -> list[dict[str, Any]]:
    """Return the events rank ``rank`` logged, in order."""
    path = out / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def listeners(port: int) -> list[str]:
    """Return the local addresses of the TCP sockets of this machine listening on ``port`` (IPv4 and IPv6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(_decode(address))
    return found


def _decode(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)
