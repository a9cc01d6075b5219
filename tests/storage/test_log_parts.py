"""The pure rules of a log kept in parts: naming, ordering, what a merge takes, what an interrupted one left."""

from __future__ import annotations

import random

from trainkeep._internal.storage.parts import Span, covered, ordered_part_names, parse_span, plan_merge


def test_names_round_trip_and_strangers_are_ignored():
    assert parse_span(Span(3, 17).name) == Span(3, 17)
    assert parse_span("notes.txt") is None and parse_span("0001-0002.jsonl") is None
    assert ordered_part_names(["0000000004-0000000004.jsonl", "x", "0000000000-0000000003.jsonl",
                               "0000000000-0000000000.jsonl"]) == [
        "0000000000-0000000003.jsonl", "0000000000-0000000000.jsonl", "0000000004-0000000004.jsonl"]


def test_a_merge_takes_the_newest_parts_of_equal_length_only():
    assert plan_merge([Span(i, i) for i in range(3)], 4) is None
    assert plan_merge([Span(i, i) for i in range(4)], 4) == [Span(i, i) for i in range(4)]
    assert plan_merge([Span(0, 3), Span(4, 4), Span(5, 5), Span(6, 6)], 4) is None


def test_covered_spans_are_the_sources_of_an_interrupted_merge():
    spans = [Span(0, 3), Span(0, 0), Span(1, 1), Span(4, 4)]
    assert covered(spans) == [Span(0, 0), Span(1, 1)]


def test_flushing_like_a_counter_keeps_few_parts_and_covers_every_flush(seed):
    rng = random.Random(seed)
    fanout, spans = rng.choice([2, 4, 16]), []
    flushes = rng.randint(1, 3000)
    for seq in range(flushes):
        spans.append(Span(seq, seq))
        while (sources := plan_merge(spans, fanout)) is not None:
            del spans[-fanout:]
            spans.append(Span(sources[0].first, sources[-1].last))
    covered_seqs = [seq for span in spans for seq in range(span.first, span.last + 1)]
    assert covered_seqs == list(range(flushes))
    digits, n = [], flushes
    while n:
        digits.append(n % fanout)
        n //= fanout
    assert len(spans) == sum(digits)  # one part per unit of each digit of `flushes` in base `fanout`
