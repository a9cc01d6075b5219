"""Power loss: what a cycle leaves on a local disk that forgets everything not yet fsynced.

The cycle runs once on the local disk through a recording FaultyStorage (every create, write, copy, fsync,
rename, link, unlink, mkdir, rmdir and directory fsync, with the bytes written). The recording is replayed on
trainkeep.testing.powerloss.DiskModel: a file's bytes are durable only once the file is fsynced, a directory
entry only once its directory is. At every crash point (after each operation) the states a power cut may
leave are written to a fresh directory and checked: everything pending lost; everything kept; everything
kept but one pending change (for each); and random mixes (a pending append maybe torn) from the printed seed.
Each state must keep the Storage contract (write_atomic: old or new content, the new one once it returned;
append(durable=True): what it appended survives) and DESIGN §5 once opened by the real engine.

Then the same with each fsync of the cycle left out in turn (FaultyStorage.drop_sync): the check must find a
broken promise every time, or that fsync would be one the code could do without (to be reported, not hidden).
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep.testing import Cycle, FaultyStorage, is_sync
from trainkeep.testing.powerloss import DiskModel, check_power_loss, sync_sites

SCENARIOS = {
    "first": Cycle(),
    "deleting": Cycle(CheckpointConfig(num_to_keep=1), earlier=1),
}
# every fsync of the local storage code, by the function that makes it (innermost frame of its call site)
FSYNC_SITES = {"write_atomic", "sync_dir", "append", "copy_file", "move_file"}


@pytest.mark.parametrize("upload", ["sync", "async"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_power_cut_keeps_the_promises(scenario: str, upload: str, seed: int) -> None:
    report = check_power_loss(replace(SCENARIOS[scenario], upload=upload), seed=seed, random_states=3)
    print(f"power loss: {report.describe()}")
    assert report.crash_points == sum(1 for op in report.ops if op.level != "mark") + 1
    assert report.violations == [], report.violations[:10]


@pytest.mark.parametrize("upload", ["sync", "async"])
def test_leaving_out_any_single_fsync_breaks_a_promise(upload: str, seed: int) -> None:
    cycle = replace(SCENARIOS["deleting"], upload=upload)
    baseline = check_power_loss(cycle, seed=seed, random_states=0)
    assert baseline.violations == []
    syncs = [op for op in baseline.ops if is_sync(op)]
    caught, missed = [], []
    for i, op in enumerate(syncs, start=1):
        report = check_power_loss(cycle, seed=seed, random_states=2, drop_syncs=[i], first_violation=True)
        where = " < ".join(op.site)
        (caught if report.violations else missed).append(f"fsync #{i} {op.name} {where}: "
                                                         f"{report.violations[0][1] if report.violations else ''}")
    print(f"{len(syncs)} fsyncs, each left out in turn:\n  " + "\n  ".join(caught + missed))
    assert not missed, "fsyncs the power-loss check cannot tell apart from none:\n" + "\n".join(missed)
    functions = {site[0].split(":")[1] for site in sync_sites(baseline.ops)}
    assert FSYNC_SITES - {"copy_file" if upload == "async" else "move_file"} <= functions, functions


def test_the_disk_model_forgets_what_was_not_fsynced(scratch: str) -> None:
    """The oracle itself: a write is lost without fsync, a rename without a directory fsync; both kept after."""
    from trainkeep._internal.storage import LocalStorage

    root = os.path.join(scratch, "root")
    os.makedirs(os.path.join(root, "d"))
    model = DiskModel(root)
    faulty = FaultyStorage(LocalStorage(), record_data=True)
    sc = faulty.inner.syscalls  # type: ignore[attr-defined]
    fd = sc.create(os.path.join(root, "d", "a.tmp"))
    sc.write(fd, b"payload")
    sc.close(fd)
    sc.rename(os.path.join(root, "d", "a.tmp"), os.path.join(root, "d", "a"))
    for op in faulty.ops:
        model.apply(op)
    assert model.state() == {"d": None}  # nothing was fsynced: the directory is as it was
    assert model.state(lambda key: True) == {"d": None, "d/a": b"payload"}  # what a killed process leaves
    sc.fsync_dir(os.path.join(root, "d"))
    model.apply(faulty.ops[-1])
    assert model.state() == {"d": None, "d/a": b""}  # the name is durable, the bytes are not
    sc.fsync_file(os.path.join(root, "d", "a"))
    model.apply(faulty.ops[-1])
    assert model.state() == {"d": None, "d/a": b"payload"}
    assert len(model.states(random.Random(0), 3)) == 2  # nothing pending: no random states
