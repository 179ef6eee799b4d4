"""The CFG-split contract: generated split schedules are valid and survive YAML;
each broken split invariant is named; the implied bytes count each pair's swap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from parastep.schedules.check import implied_totals, violations
from parastep.schedules.io import REGENERATE, dump_schedule, schedule_from_dict
from parastep.yamlio import parse_yaml


def load_schedule_text(text: str):
    return schedule_from_dict(parse_yaml(text, source="t", fix=REGENERATE), source="t")
from parastep.schedules.model import ExactWindow, ParallelWindow, Schedule

from strategies import split_schedules


def _schedule(windows, *, G: int, T: int, J: int = 4, output_bytes: int = 10) -> Schedule:
    return Schedule(model="t", scheduler="DDIMScheduler", num_steps=T, world_size=G, max_window=J, output_bytes=output_bytes,
                    totals=implied_totals(windows, world_size=G, output_bytes=output_bytes), windows=windows)


@settings(max_examples=150, deadline=None)
@given(split_schedules(world_sizes=(2, 3, 4, 8)))
def test_generated_split_schedules_are_valid_and_round_trip(s):
    assert violations(s) == []
    assert load_schedule_text(dump_schedule(s)) == s


def test_each_broken_split_invariant_is_named():
    ok = [ExactWindow(start=0, split=[[0, 1]]), ParallelWindow(start=1, placement=[[0, 1], 2])]
    assert violations(_schedule(ok, G=3, T=3)) == []
    cases = {
        "split-same-rank": [ExactWindow(start=0), ParallelWindow(start=1, placement=[[1, 1], 0])],
        "split-overlap": [ExactWindow(start=0, split=[[0, 1], [1, 2]]), ExactWindow(start=1), ExactWindow(start=2)],
        "rank-out-of-range": [ExactWindow(start=0, split=[[0, 3]]), ExactWindow(start=1), ExactWindow(start=2)],
    }
    for code, wins in cases.items():
        assert code in {v.code for v in violations(_schedule(wins, G=3, T=3))}, code
    out_of_range = [ExactWindow(start=0), ParallelWindow(start=1, placement=[[0, 5], 1])]
    assert "rank-out-of-range" in {v.code for v in violations(_schedule(out_of_range, G=3, T=3))}


def test_implied_totals_count_swaps_and_skip_the_exchange_only_when_everyone_holds_everything():
    ob = 10
    two = _schedule([ExactWindow(start=0, split=[[0, 1]]), ParallelWindow(start=1, placement=[[0, 1], [1, 0]])], G=2, T=3, output_bytes=ob)
    assert two.totals.forwards_per_rank == [3, 3]
    assert two.totals.bytes_exchanged == (2 + 2 + 2) * ob           # three swaps, no end exchange
    three = _schedule([ExactWindow(start=0), ParallelWindow(start=1, placement=[[0, 1], 2])], G=3, T=3, output_bytes=ob)
    assert three.totals.forwards_per_rank == [2, 2, 2]
    assert three.totals.bytes_exchanged == (2 + (3 - 1) * 2) * ob    # one swap + the end exchange


@pytest.mark.parametrize("text,needle", [
    ("placement: [0, [1]]", "placement"),
    ("placement: [0, [1, 2, 0]]", "placement"),
    ("placement: [0, ['1', 2]]", "placement"),
])
def test_malformed_pairs_are_rejected_by_the_parser(text, needle):
    from parastep.errors import UserError

    doc = f"""parastep_schedule: 1
model: t
scheduler: DDIMScheduler
num_steps: 3
world_size: 3
max_window: 2
output_bytes: 10
totals: {{forwards_per_rank: [2, 1, 1], bytes_exchanged: 40}}
windows:
  - {{start: 0, kind: exact}}
  - {{start: 1, kind: parallel, {text}}}
"""
    with pytest.raises(UserError) as info:
        load_schedule_text(doc)
    assert needle in str(info.value) and "\n" not in str(info.value)
