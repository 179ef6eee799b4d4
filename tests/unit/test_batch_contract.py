"""The BatchStep contract: ``batch: true`` on a parallel window (schedules/model.py, check.py, io.py)."""

from __future__ import annotations

from hypothesis import given, settings

import reference_impl as R
from parastep.schedules.check import violations
from parastep.schedules.io import dump_schedule, load_schedule, schedule_from_dict
from parastep.yamlio import parse_yaml


def read_yaml_text(text: str):
    return parse_yaml(text, source="test", fix="-")
from strategies import valid_schedules

WINDOWS = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, 0, 0], "batch": True},
           {"start": 4, "kind": "parallel", "placement": [0, 0]}]


def test_one_rank_batched_windows_longer_than_the_world_are_valid_and_round_trip(tmp_path):
    sched = R.make_schedule(WINDOWS, num_steps=6, world_size=1, output_bytes=4)
    assert violations(sched) == [] and sched.uses_batch and not sched.uses_split
    assert sched.totals.forwards_per_rank == [6]       # offsets computed, batched or not
    text = dump_schedule(sched)
    assert "batch: true" in text and "batch: false" not in text   # the default is not written: old files read the same
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert load_schedule(path) == sched


def test_a_batched_window_with_a_cfg_split_entry_is_one_named_violation():
    wins = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, [0, 1]], "batch": True}]
    base = R.make_schedule([dict(w, batch=False) if w["kind"] == "parallel" else w for w in wins],
                           num_steps=3, world_size=2, output_bytes=4)
    bad = base.model_copy(update={"windows": schedule_from_dict({**base.model_dump(mode="json"), "windows": wins}).windows})
    codes = [v.code for v in violations(bad)]
    assert codes == ["batch-split"], codes
    assert "place each offset on one rank" in str(violations(bad)[0])


def test_batch_must_be_a_boolean():
    import pytest
    from parastep.errors import MalformedInput

    sched = R.make_schedule(WINDOWS, num_steps=6, world_size=1, output_bytes=4)
    data = read_yaml_text(dump_schedule(sched).replace("batch: true", "batch: 1"))
    with pytest.raises(MalformedInput, match="batch"):
        schedule_from_dict(data)


@settings(max_examples=50, deadline=None)
@given(s=valid_schedules(max_steps=20, max_world=4, max_window=6))
def test_generated_schedules_with_batch_round_trip(s):
    assert violations(s) == []
    assert schedule_from_dict(read_yaml_text(dump_schedule(s))) == s
