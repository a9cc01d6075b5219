"""Where a process stands in a job started by a launcher (torchrun, srun, mpirun), from its environment.

Pure functions over a mapping of environment variables: ``trainkeep.launch`` reads ``os.environ`` with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from trainkeep.errors import ConfigError

# (launcher, rank, world size, local rank, local world size, node rank, job id, restart count)
_SOURCES = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID",
     "TORCHELASTIC_RESTART_COUNT"),
    ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_NODEID",
     "SLURM_JOB_ID", "SLURM_RESTART_COUNT"),
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", None, "OMPI_MCA_ess_base_jobid", None),
)


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process stands in a launched job, read from its launcher's environment variables."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int | None  # None: rank 0 works it out from the hosts of the ranks
    local_world_size: int | None
    node_rank: int | None
    master_addr: str
    port: int
    job_id: str
    attempt: int


def read_launch_env(environ: Mapping[str, str], port: int | None = None) -> LaunchEnv:
    """Return this rank's place in the job from ``environ`` (torchrun's, srun's or mpirun's variables).

    The trainkeep port is ``port``, else ``TRAINKEEP_PORT``, else ``MASTER_PORT + 1`` (torchrun's own store
    listens on ``MASTER_PORT``).

    Raises:
        ConfigError (a ValueError) naming the variables when no launcher's are set, one is missing or not an
        integer, the ranks and sizes disagree, or ``MASTER_ADDR`` / the port are missing or bad.
    """
    source = next((s for s in _SOURCES if environ.get(s[1]) is not None), None)
    if source is None:
        raise ConfigError(
            "trainkeep.init() found no launcher in the environment: it needs RANK and WORLD_SIZE (set by torchrun), "
            "SLURM_PROCID and SLURM_NTASKS (srun) or OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE (mpirun), and "
            "MASTER_ADDR and MASTER_PORT; none of RANK, SLURM_PROCID, OMPI_COMM_WORLD_RANK is set. To start workers "
            "without a launcher, use trainkeep.DataParallelTrainer(...).fit()."
        )
    launcher, rank_var, size_var, local_var, local_size_var, node_var, job_var, attempt_var = source
    rank = _int_var(environ, rank_var, 0)
    world_size = _int_var(environ, size_var, 1, required=f"{rank_var} is set")
    assert rank is not None and world_size is not None
    if rank >= world_size:
        raise ConfigError(f"{rank_var}={rank} must be less than {size_var}={world_size}")
    local_rank = _int_var(environ, local_var, 0)
    local_world_size = _int_var(environ, local_size_var, 1)
    node_rank = _int_var(environ, node_var, 0)
    if local_world_size is not None and local_world_size > world_size:
        raise ConfigError(f"{local_size_var}={local_world_size} must be at most {size_var}={world_size}")
    if local_rank is not None and local_world_size is not None and local_rank >= local_world_size:
        raise ConfigError(f"{local_var}={local_rank} must be less than {local_size_var}={local_world_size}")
    if node_rank is not None and node_rank >= world_size:
        raise ConfigError(f"{node_var}={node_rank} must be less than {size_var}={world_size}")
    master_addr = environ.get("MASTER_ADDR", "").strip()
    if not master_addr:
        raise ConfigError(
            f"trainkeep.init() under {launcher} needs MASTER_ADDR, the address of rank 0's host that every rank can "
            "reach (torchrun sets it; in an sbatch script: export MASTER_ADDR=$(scontrol show hostnames "
            '"$SLURM_JOB_NODELIST" | head -n 1))'
        )
    return LaunchEnv(launcher, rank, world_size, local_rank, local_world_size, node_rank, master_addr,
                     _port(environ, port), environ.get(job_var, "") if job_var else "",
                     (_int_var(environ, attempt_var, 0) or 0) if attempt_var else 0)


def _int_var(environ: Mapping[str, str], name: str | None, least: int, required: str = "") -> int | None:
    raw = environ.get(name) if name else None
    if raw is None:
        if required:
            raise ConfigError(f"{name} is not set, but {required}: the launcher must set both")
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {raw!r}")
    return value


def _port(environ: Mapping[str, str], port: int | None) -> int:
    if port is not None:
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(f"port must be an integer in 1 .. 65535, got {port!r}")
        return port
    for name in ("TRAINKEEP_PORT", "MASTER_PORT"):
        value = _int_var(environ, name, 1)
        if value is None:
            continue
        if value > 65535:
            raise ConfigError(f"{name} must be an integer in 1 .. 65535, got {environ[name]!r}")
        if name == "TRAINKEEP_PORT":
            return value
        return value + 1 if value < 65535 else value - 1  # torchrun's own store listens on MASTER_PORT
    raise ConfigError("trainkeep.init() needs MASTER_PORT (rank 0 listens on MASTER_PORT + 1) or TRAINKEEP_PORT "
                      "(the port itself); neither is set")


def authkey(env: LaunchEnv, environ: Mapping[str, str]) -> bytes:
    """Return the key of the connection handshake, the same on every rank of one attempt of one job.

    ``TRAINKEEP_AUTHKEY`` makes it a secret; without it the key is derived from the job's public facts, which
    keeps other jobs and earlier attempts out but not a deliberate attacker on the same network.
    """
    secret = environ.get("TRAINKEEP_AUTHKEY", "")
    facts = f"trainkeep|{secret}|{env.launcher}|{env.job_id}|{env.master_addr}|{env.port}|{env.world_size}|{env.attempt}"
    return hashlib.sha256(facts.encode()).digest()
