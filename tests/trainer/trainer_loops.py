"""Training functions for the trainer tests, importable by name in the worker processes.

They stay light (no pytest, no torch at import) so that workers start fast. Behaviour is chosen through the
config dict: which ranks checkpoint, where a failure is injected, and a log file that records every attempt.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from typing import Any

import trainkeep as tk


def log(config: dict[str, Any], line: str) -> None:
    """Append ``line`` to the test's log file (one write: lines of several workers never interleave)."""
    if config.get("log"):
        with open(config["log"], "a") as f:
            f.write(line + "\n")


def read_log(path: str) -> list[str]:
    return open(path).read().splitlines() if os.path.exists(path) else []


def maybe_fail(config: dict[str, Any], rank: int, epoch: int) -> None:
    """Fail as ``config["fail"]`` says: {"rank", "epoch", "how": raise|sigkill|exit, "once": marker path}."""
    fail = config.get("fail")
    if not fail or fail["rank"] != rank or fail["epoch"] != epoch:
        return
    once = fail.get("once")
    if once:
        if os.path.exists(once):
            return
        open(once, "w").close()
    how = fail.get("how", "raise")
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "exit":
        os._exit(7)
    raise ValueError(f"injected failure on rank {rank} at epoch {epoch}")


def start_epoch(checkpoint: tk.Checkpoint | None) -> int:
    """Return the epoch after the one saved in ``checkpoint`` (0 without one)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, "state.json")) as f:
            return int(json.load(f)["epoch"]) + 1


def write_checkpoint(config: dict[str, Any], rank: int, epoch: int) -> tk.Checkpoint:
    """Write this rank's files for ``epoch``: rank 0 the state, every rank its shard."""
    d = tempfile.mkdtemp(prefix=f"src_r{rank}_e{epoch}_", dir=config.get("tmp"))
    if rank == 0:
        with open(os.path.join(d, "state.json"), "w") as f:
            json.dump({"epoch": epoch}, f)
    name = config.get("shard_name", "shard_{rank}.txt").format(rank=rank)
    with open(os.path.join(d, name), "w") as f:
        f.write(f"rank {rank} epoch {epoch}")
    return tk.Checkpoint.from_directory(d)


def train(config: dict[str, Any]) -> dict[str, Any]:
    """Resume from the latest checkpoint, then report one round per epoch as the config says.

    Config keys: epochs; ckpt_ranks (default [0]); every (checkpoint every N epochs); losses {epoch: loss};
    modes {rank: mode}; delete {rank: bool}; dir_names {rank: template with {epoch}} or dir_name; fail (see
    maybe_fail); list_run (log the run directory's entries after each report).
    """
    context = tk.get_context()
    rank = context.get_world_rank()
    start = tk.get_checkpoint()
    first = start_epoch(start)
    attempt = sum(1 for line in read_log(config["log"]) if line.startswith("start rank=0")) if rank == 0 else -1
    log(config, f"start rank={rank} epoch={first} from={os.path.basename(start.path) if start else None}")
    for epoch in range(first, config["epochs"]):
        maybe_fail(config, rank, epoch)
        checkpoint = None
        if rank in config.get("ckpt_ranks", [0]) and epoch % config.get("every", 1) == 0:
            checkpoint = write_checkpoint(config, rank, epoch)
        loss = config.get("losses", {}).get(str(epoch), 1.0 / (epoch + 1))
        template = config.get("dir_names", {}).get(str(rank), config.get("dir_name"))
        tk.report({"epoch": epoch, "rank": rank, "loss": loss, "attempt": attempt}, checkpoint=checkpoint,
                  checkpoint_dir_name=template.format(epoch=epoch) if template else None,
                  checkpoint_upload_mode=tk.CheckpointUploadMode(config.get("modes", {}).get(str(rank), "SYNC")),
                  delete_local_checkpoint_after_upload=config.get("delete", {}).get(str(rank)))
        latest = tk.get_checkpoint()
        line = f"reported rank={rank} epoch={epoch} latest={os.path.basename(latest.path) if latest else None}"
        if config.get("list_run"):
            line += " dirs=" + ",".join(sorted(n for n in os.listdir(context.get_storage().experiment_fs_path)
                                                if n.startswith("checkpoint_")))
        log(config, line)
    return {"rank": rank, "epochs": config["epochs"]}


def probe_context(config: dict[str, Any]) -> None:
    """Log what get_context() says on this rank, and the torch.distributed variables of the environment."""
    context = tk.get_context()
    storage = context.get_storage()
    facts = [context.get_world_rank(), context.get_local_rank(), context.get_world_size(),
             context.get_local_world_size(), context.get_node_rank(), context.get_experiment_name(),
             storage.experiment_fs_path, storage.build_checkpoint_path_from_name("x"),
             context.get_checkpoint_config().num_to_keep]
    log(config, json.dumps(facts))
    tk.report({"rank": context.get_world_rank()})


def probe_threads(config: dict[str, Any]) -> None:
    """Log this rank's thread-count variables (set by resources_per_worker={"CPU": n})."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    log(config, json.dumps([tk.get_context().get_world_rank()] + [os.environ.get(n) for n in names]))
    tk.report({})


def all_ready(config: dict[str, Any], rank: int) -> None:
    """Wait (60 s at most) until every rank got here: a file handshake that does not use report()."""
    open(os.path.join(config["tmp"], f"ready_{rank}"), "w").close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(config["tmp"], f"ready_{r}"))
               for r in range(tk.get_context().get_world_size())):
            return
        time.sleep(0.01)
    raise TimeoutError("the other ranks never started")


def uneven(config: dict[str, Any]) -> None:
    """Rank 0 reports ``config["reports"]`` times; the others stop one report short, then return or hang."""
    rank = tk.get_context().get_world_rank()
    all_ready(config, rank)  # so that a slow start under load cannot time out round 0 instead
    count = config["reports"] if rank == 0 else config["reports"] - 1
    for i in range(count):
        tk.report({"i": i})
    if rank != 0 and config["then"] == "hang":
        time.sleep(3600)


def bad_report(config: dict[str, Any]) -> None:
    """Report once correctly, then once with the value of ``config["bad"]`` (rank 0 only)."""
    log(config, "attempt")
    rank = tk.get_context().get_world_rank()
    tk.report({"loss": 1.0})
    kwargs = dict(config["bad"]) if rank == 0 else {}
    metrics = kwargs.pop("metrics", {"loss": 0.5})
    checkpoint = write_checkpoint(config, rank, 1) if kwargs.pop("checkpoint", False) else None
    tk.report(metrics, checkpoint=checkpoint, **kwargs)


def in_place(config: dict[str, Any]) -> None:
    """Write every rank's shard straight into the run (NO_UPLOAD), or mix per ``config["modes"]``."""
    context = tk.get_context()
    rank = context.get_world_rank()
    for epoch in range(config["epochs"]):
        name = f"ckpt_{epoch}"
        mode = tk.CheckpointUploadMode(config.get("modes", {}).get(str(rank), "NO_UPLOAD"))
        if mode is tk.CheckpointUploadMode.NO_UPLOAD:
            target = config.get("target") or context.get_storage().build_checkpoint_path_from_name(name)
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, f"shard_{rank}.txt"), "w") as f:
                f.write(f"rank {rank} epoch {epoch}")
            checkpoint = tk.Checkpoint.from_directory(target)
        else:
            checkpoint = write_checkpoint(config, rank, epoch)
        tk.report({"epoch": epoch}, checkpoint=checkpoint, checkpoint_dir_name=name, checkpoint_upload_mode=mode)
        latest = tk.get_checkpoint()
        log(config, f"reported rank={rank} epoch={epoch} latest={os.path.basename(latest.path) if latest else None}")


def broken_async(config: dict[str, Any]) -> None:
    """Hand a checkpoint with an unreadable file to the ASYNC uploader on rank 1: its copy fails."""
    rank = tk.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        checkpoint = None
        if rank == 1 and epoch == 1:
            checkpoint = write_checkpoint(config, rank, epoch)
            os.symlink("/proc/self/mem", os.path.join(checkpoint.path, "unreadable"))  # read: EIO
        tk.report({"epoch": epoch}, checkpoint=checkpoint, checkpoint_upload_mode=tk.CheckpointUploadMode.ASYNC)
        log(config, f"reported rank={rank} epoch={epoch}")


def report_dir(config: dict[str, Any]) -> None:
    """Report ``config["source"]`` as the checkpoint, with ``config["delete"]``."""
    tk.report({"x": 1}, checkpoint=tk.Checkpoint.from_directory(config["source"]),
              delete_local_checkpoint_after_upload=config["delete"])


def ddp_train(config: dict[str, Any]) -> Any:
    """Train a tiny MLP with DDP on a fixed data set; checkpoint model and optimizer every epoch on rank 0."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset

    from trainkeep.torch import get_device, prepare_data_loader, prepare_model

    torch.set_num_threads(1)
    rank = tk.get_context().get_world_rank()
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(96, 6, generator=gen)
    y = x @ torch.arange(1.0, 7.0).unsqueeze(1) + 0.1 * torch.randn(96, 1, generator=gen)
    loader = prepare_data_loader(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    torch.manual_seed(0)
    model = prepare_model(torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)))
    plain = getattr(model, "module", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    first = 0
    if (start := tk.get_checkpoint()) is not None:
        with start.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"))
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = state["epoch"] + 1
    loader.sampler.set_epoch(0)
    log(config, "facts " + json.dumps([rank, *(os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
            "LOCAL_WORLD_SIZE", "MASTER_ADDR")), dist.get_backend(), dist.get_rank(), type(model).__name__,
            type(loader.sampler).__name__, str(get_device()), sorted(loader.sampler)]))
    for epoch in range(first, config["epochs"]):
        maybe_fail(config, rank, epoch)
        loader.sampler.set_epoch(epoch)
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            optimizer.step()
        checkpoint = None
        if rank == 0:
            d = tempfile.mkdtemp(dir=config["tmp"])
            torch.save({"model": plain.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                       os.path.join(d, "state.pt"))
            checkpoint = tk.Checkpoint.from_directory(d)
        tk.report({"epoch": epoch, "loss": loss.item()}, checkpoint=checkpoint)
    return plain.state_dict() if rank == 0 else None


def report_then_hang(config: dict[str, Any]) -> None:
    """Report ``config["epochs"]`` checkpoint rounds; then rank 0 reports one more (never completed), all hang."""
    rank = tk.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        tk.report({"epoch": epoch}, checkpoint=write_checkpoint(config, rank, epoch) if rank == 0 else None)
    log(config, f"hang rank={rank} pid={os.getpid()}")
    if rank == 0:
        tk.report({"epoch": config["epochs"]}, checkpoint=write_checkpoint(config, rank, config["epochs"]))
    time.sleep(3600)


class LoadsOnlyWhereMade:
    """A value that pickles in the worker but cannot be unpickled in another process (the driver)."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (_load_in, (os.getpid(),))


def _load_in(pid: int) -> LoadsOnlyWhereMade:
    if os.getpid() != pid:
        raise RuntimeError("this value cannot be loaded outside the process that made it")
    return LoadsOnlyWhereMade()


def returns_unpicklable(config: dict[str, Any]) -> Any:
    """Report once, then return a value the driver cannot receive (config["kind"]: "lock" or "driver")."""
    import threading

    tk.report({"epoch": 0})
    return threading.Lock() if config["kind"] == "lock" else LoadsOnlyWhereMade()
