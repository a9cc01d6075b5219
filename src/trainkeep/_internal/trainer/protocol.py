"""The messages between the driver (the controller) and its worker processes.

Each worker has one duplex connection to the driver (a socket pair with the local executor, a TCP connection
with the Ray executor: the messages are the same). The worker's main thread sends a request and, when the
request needs one, blocks on exactly one reply; its background uploader thread sends, and once the worker made
an ASYNC report it waits for the ``Dest`` of its rounds (trainer/uploader.py ``Inbox`` sorts the replies). The
driver never sends a message nobody waits for, so a worker's receive queue is always empty between two calls.

Round ``k`` of an attempt is made of the k-th ``Announce`` of every rank. A report flows like this::

    worker                              driver
    Announce(metrics, files, ...)  ->   stage the checkpoint directory on the first announcement with files
                                   <-   Dest(path, round)     (a rank that uploads: where its files go)
    (copies its files into path)
    Uploaded(round, entries)       ->   commit once every rank announced and every upload arrived
                                   <-   Done(latest)          (SYNC / NO_UPLOAD: after the commit)
                                   <-   Released(latest)      (ASYNC without files: once all ranks arrived)

The other requests of a worker, each answered by exactly one reply::

    Query()                        ->   <- Latest(latest)                       get_checkpoint()
    Collective(kind, payload)      ->   <- CollectiveDone(payload)  once every rank made its c-th collective call
    ListReported(mode, timeout_s)  ->   <- Reported(checkpoints)    once this rank's rounds are finished
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.manifest import FileEntry

if TYPE_CHECKING:
    from trainkeep._internal.storage import Storage

StorageWrapper = Callable[["Storage", str], "Storage"]
"""``wrapper(storage, role)`` -> the storage to use, ``role`` "driver" or "worker" (``trainkeep.testing``)."""


@dataclass
class WorkerSpec:
    """What every worker of a run gets (pickled once by the driver with cloudpickle, as ``Boot.spec``)."""

    train_fn: Callable[..., Any]
    config: dict[str, Any] | None
    takes_config: bool
    world_size: int
    experiment_name: str
    storage_path: str
    run_path: str
    filesystem: Any
    checkpoint_config: CheckpointConfig
    setup: Any
    use_gpu: bool = False
    storage_wrapper: StorageWrapper | None = None  # fault injection in tests: see trainkeep.testing.injection
    code_files: dict[tuple[str, int], str] = field(default_factory=dict)  # see trainer/sources.py
    validation: bool = False  # the trainer has a validation_config (report(validation=...) is allowed)
    datasets: dict[str, Any] | None = None  # datasets that travel whole (trainer/datasets.py); None: no datasets=

# ---------------------------------------------------------------------------------------------- to the driver


class Announce(NamedTuple):
    """A worker reached ``report()``: its metrics (rank 0's are the round's; every rank's reach the user
    callbacks), and its file list when it checkpoints."""

    metrics: dict[str, Any] | None
    has_checkpoint: bool
    files: list[str] | None  # None for NO_UPLOAD (the files already lie in the run directory)
    dir_name: str | None
    mode: str
    validation: Any = False  # report(validation=...): False, True or a ValidationTaskConfig pickled by cloudpickle
    custom_upload: bool = False  # a checkpoint_upload_fn uploaded the files: the driver reads them back


class Uploaded(NamedTuple):
    """A worker finished copying its files of round ``round`` (attempt-relative) into the staged directory.

    ``skipped``: the size and checksum of its files that a lower rank uploaded (the same relative path), so the
    driver can warn when the copies differ.
    """

    round: int
    entries: list[FileEntry]
    skipped: list[FileEntry] | None = None


class Failed(NamedTuple):
    """The worker's training function (or one of its uploads) raised; ``error`` is the pickled exception."""

    error: bytes
    traceback: str
    bad_input: bool


class Finished(NamedTuple):
    """The training function returned; rank 0 sends its pickled return value (None when it cannot be pickled:
    ``warning`` then says why)."""

    return_value: bytes | None
    warning: str = ""


class Query(NamedTuple):
    """``get_checkpoint()`` asks for the newest committed checkpoint."""


# ---------------------------------------------------------------------------------------------- to a worker


class Placement(NamedTuple):
    """Where a rank runs, as ``get_context()`` reports it: its node among the group's nodes, its rank there."""

    node_rank: int
    local_rank: int
    local_world_size: int


class Layout(NamedTuple):
    """Where the ranks of one attempt run, as the driver sets up their environment (by rank)."""

    placements: list[Placement]
    node_ips: list[str]
    master_port: int | None  # a port free on rank 0's node; None: pick one on this machine
    gpu_ids: list[list[str]] | None  # the GPU ids the executor gave each rank; None: it does not say
    ports: list[int] | None = None  # a port free on each rank's node; None: pick them on this machine
    driver_ip: str = "127.0.0.1"  # where the workers reach the driver (a service the driver hosts)

    @classmethod
    def local(cls, world_size: int) -> Layout:
        """Return the layout of ``world_size`` workers on this machine."""
        return cls([Placement(0, rank, world_size) for rank in range(world_size)], ["127.0.0.1"] * world_size,
                   None, None)


class Boot(NamedTuple):
    """The first message a worker receives: where to import from, the shared spec, and its own rank."""

    sys_path: list[str]
    spec: bytes
    rank: int
    start_checkpoint: str | None
    attempt: int
    placement: Placement | None = None  # None: every rank on one machine (the local executor)
    shards: bytes | None = None  # this rank's slices of the datasets, pickled (trainer/datasets.py)


class Dest(NamedTuple):
    """Copy your files into ``path`` (the round's staged checkpoint directory): ``files`` of them, all when None.

    A file left out is one a lower rank also passed and uploads (see ``rounds.assign_paths``).
    """

    path: str
    files: list[str] | None = None
    round: int = -1  # the attempt-relative round, as in Uploaded (an ASYNC worker may wait for several at once)


class Done(NamedTuple):
    """Your round is committed (or recorded) and retention ran; ``latest`` is the newest checkpoint's path."""

    latest: str | None


class Released(NamedTuple):
    """Every rank reached your round (the barrier of a report that does not wait for the commit)."""

    latest: str | None


class Latest(NamedTuple):
    """The answer to ``Query``."""

    latest: str | None


# ---------------------------------------------------------------------------------------------- collectives


class Collective(NamedTuple):
    """A worker called a collective (worker -> driver): ``kind`` "barrier" or "broadcast"; ``payload`` is rank 0's
    pickled object of a broadcast (None otherwise). The c-th calls of all ranks form collective c."""

    kind: str
    payload: bytes | None = None


class CollectiveDone(NamedTuple):
    """Every rank reached the collective (driver -> worker); ``payload`` is rank 0's object of a broadcast."""

    payload: bytes | None = None


class ListReported(NamedTuple):
    """``get_all_reported_checkpoints()`` (worker -> driver): answered once this rank's rounds are finished
    (and, in mode VALIDATED, no validation is pending), or after ``timeout_s`` with what there is."""

    consistency_mode: str
    timeout_s: float | None = None


class Reported(NamedTuple):
    """The answer to ``ListReported``: (path, metrics, status) of each reported checkpoint, worst to best."""

    checkpoints: list[tuple[str, dict[str, Any], str]]
