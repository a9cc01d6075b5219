"""The pure round bookkeeping: naming rules and file clashes, whatever order the ranks arrive in."""

from __future__ import annotations

import itertools

import pytest

from trainkeep.trainer.rounds import Arrival, InconsistentReportError, Round


def arrival(rank, has_checkpoint=True, dir_name=None, files=("a",), mode="SYNC"):
    return Arrival(rank, has_checkpoint, mode, dir_name, list(files) if files is not None else None)


def outcome(arrivals):
    """Return the round's checkpoint name, or the error text, after adding ``arrivals`` in order."""
    rnd = Round(0, 7, 0.0)
    try:
        for a in arrivals:
            rnd.add(a)
        rnd.check_names()
    except InconsistentReportError:
        return "error"
    return rnd.name


CASES = [
    ([arrival(0, files=["a"]), arrival(1, files=["b"]), arrival(2, False)], "checkpoint_000007"),
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, False, dir_name="x")], "x"),
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, dir_name="x", files=["b"])], "x"),
    ([arrival(0, False, dir_name="x"), arrival(1, False, dir_name="y")], None),  # no checkpoint: names ignored
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, dir_name="y", files=["b"])], "error"),
    ([arrival(0, dir_name="x", files=["a"]), arrival(1, files=["b"])], "error"),  # None is the default name
    ([arrival(0, False, dir_name="x"), arrival(1, files=["b"])], "error"),
    ([arrival(0, files=["a"]), arrival(1, files=["a"])], "error"),
    ([arrival(0, files=["d/a"]), arrival(1, files=["d"])], "error"),  # a file of one is a directory of the other
    ([arrival(0, files=["d/a", "d/e/f"]), arrival(1, files=["d/b", "d/e/g"])], "checkpoint_000007"),
    ([arrival(0, files=None), arrival(1, files=["b"], dir_name=None)], "checkpoint_000007"),
]


@pytest.mark.parametrize(("arrivals", "expected"), CASES)
def test_the_outcome_does_not_depend_on_the_order_of_arrival(arrivals, expected):
    assert {outcome(list(order)) for order in itertools.permutations(arrivals)} == {expected}


def test_the_first_checkpoint_of_a_round_is_the_one_that_stages_it():
    rnd = Round(0, 0, 0.0)
    assert rnd.add(arrival(1, False)) is False
    assert rnd.add(arrival(2, files=["b"])) is True
    assert rnd.add(arrival(0, files=["a"])) is False
    assert rnd.is_complete(3) and rnd.missing(4) == [3]


def test_a_clash_names_the_file_and_both_ranks():
    rnd = Round(0, 3, 0.0)
    rnd.add(arrival(2, files=["ok", "model.pt"]))
    with pytest.raises(InconsistentReportError, match=r"file 'model.pt' .*round 3.* both rank 2 and rank 0"):
        rnd.add(arrival(0, files=["model.pt"]))
