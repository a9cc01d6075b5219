"""trainkeep.collective with real workers: barrier and broadcast through the round protocol, and their failures."""

from __future__ import annotations

import json
import time

import api_loops as loops
import pytest

import trainkeep as tk


def fit(fn, config, run_config, workers):
    return tk.DataParallelTrainer(fn, train_loop_config=config, scaling_config=tk.ScalingConfig(num_workers=workers),
                                  run_config=run_config).fit()


def read(path):
    return open(path).read().splitlines()


@pytest.mark.parametrize("workers", [2, 3])
def test_barrier_releases_no_rank_before_the_last_arrives(workers, loop_config, make_run):
    fit(loops.barrier_order, loop_config, make_run(), workers)

    lines = [line.split() for line in read(loop_config["log"])]
    arrived = {int(r): float(t) for kind, r, t in lines if kind == "arrive"}
    left = {int(r): float(t) for kind, r, t in lines if kind == "leave"}
    assert sorted(arrived) == sorted(left) == list(range(workers))
    assert min(left.values()) >= max(arrived.values())  # nobody left before the slowest rank arrived


@pytest.mark.parametrize("workers", [2, 3])
def test_broadcast_gives_every_rank_rank_0_s_object(workers, loop_config, make_run):
    result = fit(loops.broadcast, loop_config, make_run(), workers)

    seen = sorted((json.loads(line) for line in read(loop_config["log"])), key=lambda row: row["rank"])
    assert [row["rank"] for row in seen] == list(range(workers))
    for row in seen:
        assert row["got"] == {"from": 0, "values": [0, 1, 2]}
        assert row["nothing"] is None  # rank 0 broadcast None; the others' own values are ignored
    assert result.return_value == {"from": 0, "values": [0, 1, 2]}
    assert result.metrics == {"rank": 0, "got": 0}  # reports still pair into rounds after collectives


@pytest.mark.parametrize(("workers", "absent"), [(2, 1), (3, 0)])
def test_a_rank_that_never_arrives_fails_the_run_after_the_timeout_naming_it(workers, absent, loop_config, make_run):
    loop_config["absent"] = absent
    started = time.monotonic()
    with pytest.raises(tk.TrainingFailedError) as exc:
        fit(loops.skip_barrier, loop_config, make_run(report_timeout_s=2), workers)

    assert isinstance(exc.value, tk.ReportTimeoutError)
    arrived = [r for r in range(workers) if r != absent]
    assert f"rank(s) [{absent}] did not reach barrier()" in str(exc.value)
    assert f"within 2 s of rank(s) {arrived}" in str(exc.value)
    assert time.monotonic() - started < 60


def test_a_rank_that_returns_while_others_wait_in_a_barrier_fails_the_run_at_once(loop_config, make_run):
    loop_config.update(absent=1, returns=True)
    with pytest.raises(tk.TrainingFailedError, match=r"rank 1 returned without calling barrier\(\)"):
        fit(loops.skip_barrier, loop_config, make_run(report_timeout_s=60), 2)


def test_different_collectives_at_the_same_point_fail_the_run(loop_config, make_run):
    with pytest.raises(tk.TrainingFailedError, match=r"called (barrier|broadcast_from_rank_zero)\(\) as its collective"):
        fit(loops.mismatched, loop_config, make_run(report_timeout_s=60), 2)


def test_an_object_that_cannot_be_pickled_is_a_clear_type_error(loop_config, make_run):
    with pytest.raises(tk.TrainingFailedError) as exc:
        fit(loops.unpicklable_broadcast, loop_config, make_run(failure_config=tk.FailureConfig(max_failures=2)), 2)

    assert isinstance(exc.value, TypeError)
    assert "broadcast_from_rank_zero() needs an object that can be pickled" in str(exc.value)
    assert "rank 0 passed a lock" in str(exc.value)
    assert list(exc.value.worker_failures) == [0]


@pytest.mark.parametrize("call", [tk.collective.barrier, lambda: tk.collective.broadcast_from_rank_zero(1)])
def test_collectives_outside_a_run_say_how_to_start_one(call):
    with pytest.raises(tk.SessionError, match=r"trainkeep\.collective\.\w+\(\) works only inside a training function"):
        call()
