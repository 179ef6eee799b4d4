"""Which prior parts price a plan (``Profile.prior_parts_for``) and ``parastep plan``'s one-line warning.

The bundled digits profile measured its 2-rank exchange and its CFG pair swap on this machine with
the executor's own exchange code and took ranks 3..8 from the ``nvlink`` preset (each comm entry
says which, ``CommEntry.source``): a 2-rank plan is priced by measurements only, a 4-rank plan by
the preset's exchange entry. Every other prior part (compute, deviation, ...) prices any plan.
"""

from __future__ import annotations

import json

import pytest
import yaml

from parastep.profiles.interconnects import comm_entry_for, comm_for, pair_entry_for
from parastep.profiles.io import SHIPPED_DIR, dump_profile, load_profile, write_profile
from parastep.profiles.model import Comm, CommEntry, Prior, Profile

from clitools import run_cli

NVLINK = "interconnect preset 'nvlink'"
BANNER = "priced by priors, not measurements"


@pytest.fixture(scope="module")
def digits() -> Profile:
    return load_profile(SHIPPED_DIR / "digits.yaml")[0]


@pytest.fixture(scope="module")
def sdxl() -> Profile:
    return load_profile(SHIPPED_DIR / "sdxl.yaml")[0]


def _without_sources(profile: Profile) -> Profile:
    """The profile as a file from before per-entry sources reads: no ``source`` on any comm entry."""
    data = yaml.safe_load(dump_profile(profile))
    for e in data["comm"]["entries"] + ([data["comm"]["pair"]] if data["comm"].get("pair") else []):
        e.pop("source", None)
    return Profile.model_validate(data)


# ---- the shipped files record where each entry comes from -----------------------------------

def test_digits_records_measured_and_preset_entries(digits):
    assert digits.comm.preset == "nvlink" and digits.provenance.comm.source == "prior"
    for e in digits.comm.entries:
        from_preset = comm_entry_for("nvlink", ranks=e.ranks)
        same = (e.latency_s, e.bandwidth_bytes_per_s) == (from_preset.latency_s, from_preset.bandwidth_bytes_per_s)
        assert e.source == ("preset" if same else "measured"), e
    assert [e.ranks for e in digits.comm.entries if e.source == "measured"] == [2]
    assert digits.comm.pair.source == "measured"
    # the provenance says the same in words
    assert "g = 2..2 measured" in digits.provenance.comm.rule and "g = 3..8 from interconnect preset 'nvlink'" in digits.provenance.comm.rule


def test_sdxl_comm_is_all_preset(sdxl):
    assert sdxl.comm.preset == "nvlink"
    assert {e.source for e in sdxl.comm.entries} == {"preset"} and sdxl.comm.pair.source == "preset"


def test_presets_mark_their_entries():
    comm = comm_for("pcie4", world_size=4)
    assert {e.source for e in comm.entries} == {"preset"} and comm.pair.source == "preset"
    assert pair_entry_for("nvlink").source == "preset"


def test_profile_schema_has_the_source_field():
    code, out, _ = run_cli(["schema", "profile"])
    assert code == 0
    schema = json.loads(out)
    src = schema["$defs"]["CommEntry"]["properties"]["source"]
    assert {"enum": ["measured", "preset"], "type": "string"} in src["anyOf"]
    assert "source" not in schema["$defs"]["CommEntry"]["required"]


def test_a_preset_entry_needs_a_named_preset():
    with pytest.raises(ValueError, match="names no preset"):
        Comm(entries=[CommEntry(ranks=2, latency_s=0.0, bandwidth_bytes_per_s=1.0, source="preset")])
    Comm(entries=[CommEntry(ranks=2, latency_s=0.0, bandwidth_bytes_per_s=1.0, source="measured")])
    Comm(preset="nvlink", pair=pair_entry_for("nvlink"))


# ---- Profile.prior_parts_for -----------------------------------------------------------------

def test_prior_parts_for_digits(digits):
    assert digits.prior_parts() == ["comm"]                      # the profile as a whole: part of comm is a prior
    assert digits.prior_parts_for(1) == []
    assert digits.prior_parts_for(2) == [] and digits.prior_parts_for(2, uses_split=True) == []
    assert digits.prior_parts_for(4) == [f"comm for 4 ranks ({NVLINK})"]
    assert digits.prior_parts_for(8, uses_split=True) == [f"comm for 8 ranks ({NVLINK})"]   # the swap was measured
    assert digits.prior_parts_for(12) == [f"comm for 12 ranks (extrapolated from the 8-rank entry, {NVLINK})"]


def test_prior_parts_for_an_old_profile_keeps_its_meaning(digits):
    """Without per-entry sources the comm part's provenance speaks for every entry."""
    old = _without_sources(digits)
    assert old.comm == digits.comm.model_copy(update={
        "entries": [e.model_copy(update={"source": None}) for e in digits.comm.entries],
        "pair": digits.comm.pair.model_copy(update={"source": None})})
    assert old.prior_parts_for(2) == ["comm for 2 ranks"]
    assert old.prior_parts_for(2, uses_split=True) == ["comm for 2 ranks", "CFG pair swap"]
    measured = old.model_copy(update={"provenance": old.provenance.model_copy(update={"comm": digits.provenance.compute})})
    assert measured.provenance.comm.source == "measured" and measured.prior_parts_for(4, uses_split=True) == []


def test_prior_parts_for_counts_other_priors_always(digits, sdxl):
    assert sdxl.prior_parts_for(1) == ["deviation", "propagation", "similarity"]
    assert sdxl.prior_parts_for(2, uses_split=True) == ["deviation", "propagation", "similarity",
                                                        f"comm for 2 ranks ({NVLINK})", f"CFG pair swap ({NVLINK})"]
    prior_compute = digits.model_copy(update={"provenance": digits.provenance.model_copy(
        update={"compute": Prior(rule="a stated rule")})})
    assert prior_compute.prior_parts_for(2) == ["compute"]
    assert prior_compute.prior_parts_for(4) == ["compute", f"comm for 4 ranks ({NVLINK})"]


def test_prior_parts_for_a_world_size_without_costs(digits):
    bare = digits.model_copy(update={"comm": Comm(entries=[e for e in digits.comm.entries if e.ranks == 2])})
    assert bare.prior_parts_for(2) == []
    with pytest.raises(ValueError, match="no exchange cost for 4 ranks"):
        bare.prior_parts_for(4)


# ---- parastep plan's warning -----------------------------------------------------------------

def _plan(*argv):
    code, out, err = run_cli(["plan", "--workers", "1", *argv])
    assert code == 0, err
    return yaml.safe_load(out), err


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if BANNER in line]


def test_digits_on_two_ranks_has_no_prior_warning():
    s, err = _plan("--model", "digits", "--gpus", "2")
    assert s["world_size"] == 2 and _warnings(err) == [] and "!!" not in err
    assert "WARNING" not in err and "prior" not in err.lower()
    assert s["profile"]["prior_parts"] == []          # the schedule records what prices this plan


def test_the_schedule_and_simulate_name_the_prior_parts_that_price_it(tmp_path):
    for gpus, expected in ((4, [f"comm for 4 ranks ({NVLINK})"]), (2, [])):
        s, _ = _plan("--model", "digits", "--gpus", str(gpus))
        assert s["profile"]["prior_parts"] == expected
        path = tmp_path / f"g{gpus}.yaml"
        path.write_text(yaml.safe_dump(s))
        code, out, err = run_cli(["simulate", str(path)])
        assert code == 0, err
        lines = [line for line in out.splitlines() if line.startswith("prior parts")]
        assert lines == ([f"prior parts   {', '.join(expected)} (not measured)"] if expected else [])


def test_digits_on_four_ranks_warns_in_one_line_naming_the_world_size():
    _, err = _plan("--model", "digits", "--gpus", "4")
    assert _warnings(err) == [f"parastep plan: warning: {BANNER}: comm for 4 ranks ({NVLINK}); "
                              "profile on the target hardware for a measured plan"]
    assert "!!" not in err


def test_another_interconnect_prices_even_two_ranks_by_a_prior():
    _, err = _plan("--model", "digits", "--gpus", "2", "--interconnect", "pcie4")
    (line,) = _warnings(err)
    assert "comm for 2 ranks (interconnect preset 'pcie4')" in line


def test_a_prior_compute_warns_on_any_world_size(tmp_path, digits):
    path = tmp_path / "prior-compute.yaml"
    write_profile(digits.model_copy(update={"provenance": digits.provenance.model_copy(
        update={"compute": Prior(rule="one forward per step from a published latency")})}), path)
    _, err = _plan("--profile", str(path), "--gpus", "2")
    (line,) = _warnings(err)
    assert f"{BANNER}: compute;" in line


def test_sdxl_warns_in_one_line():
    s, err = _plan("--model", "sdxl", "--gpus", "8")
    (line,) = _warnings(err)
    assert line.startswith(f"parastep plan: warning: {BANNER}: deviation, propagation, similarity, comm for 8 ranks ({NVLINK})")
    assert s["profile"]["prior_parts"] == ["deviation", "propagation", "similarity", f"comm for 8 ranks ({NVLINK})",
                                           f"CFG pair swap ({NVLINK})"]
    assert line.endswith(f"{', '.join(s['profile']['prior_parts'])}; profile on the target hardware for a measured plan")
