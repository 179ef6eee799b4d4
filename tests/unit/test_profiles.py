"""Profiles: the shipped sdxl profile, the prior rule and its re-derivation, interconnect presets,
YAML round trip and malformed input."""

from __future__ import annotations

import functools
import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from parastep.errors import UserError
from parastep.profiles import interconnects, priors
from parastep.profiles.io import SHIPPED_DIR, dump_profile, load_profile, resolve_profile, shipped_profiles, write_profile
from parastep.profiles.make_sdxl import build_profile, output_bytes
from parastep.profiles.model import PREDICTORS, Measured, Profile

SDXL = SHIPPED_DIR / "sdxl.yaml"


@pytest.fixture(scope="module")
def sdxl() -> Profile:
    return load_profile(SDXL)[0]


# ---- shipped sdxl ---------------------------------------------------------------------------

def test_sdxl_is_shipped_and_loads(sdxl):
    assert "sdxl" in shipped_profiles()
    prof, sha = resolve_profile("sdxl")
    assert prof == sdxl and len(sha) == 64
    assert sdxl.model == "sdxl" and sdxl.scheduler == "EulerDiscreteScheduler"
    assert sdxl.num_steps == 50 and sdxl.guidance_scale == 5.0 and sdxl.resolution_px == (1024, 1024)
    assert sdxl.max_window >= 8


def test_sdxl_file_is_reproducible_from_its_script(sdxl):
    assert SDXL.read_text(encoding="utf-8") == dump_profile(build_profile())


def test_sdxl_output_bytes_from_shapes(sdxl):
    assert sdxl.output_bytes == output_bytes(height_px=1024, width_px=1024) == 4 * 128 * 128 * 2 == 131072


def _h200_runs() -> list[dict]:
    """The shipped SDXL compute's inputs, read here independently of make_sdxl."""
    import json

    files = sorted((SHIPPED_DIR / "measurements").glob("sdxl_unet_*.json"))
    assert len(files) == 3
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def _median3(values) -> float:
    a, b, c = sorted(values)
    return b


def test_sdxl_prior_parts_are_reported(sdxl):
    assert set(sdxl.prior_parts()) == {"deviation", "propagation", "similarity", "comm"}
    assert sdxl.calibration is None and sdxl.provenance.calibration is None
    prov = sdxl.provenance.compute
    assert isinstance(prov, Measured) and prov.device == "NVIDIA H200" and "random weights" in prov.notes
    assert "sdxl-base-1.0" in prov.notes and "float16" in prov.notes and "1024x1024" in prov.notes
    assert "nvidia-h200-measured" in sdxl.name
    prior = build_profile(compute_paths=())          # the earlier compute, still available, still labelled a prior
    assert "compute" in prior.prior_parts() and "h100" in prior.name
    assert "huggingface.co" in prior.provenance.compute.reference and "2496" in prior.provenance.compute.reference
    assert "cannot be measured" in sdxl.provenance.deviation.rule
    assert sdxl.comm.preset == "nvlink"


def test_sdxl_costs(sdxl):
    runs = _h200_runs()
    for r in runs:
        assert r["device_name"] == "NVIDIA H200" and r["config"] == "sdxl-base-1.0" and r["dtype"] == "float16"
        assert r["resolution_px"] == [1024, 1024] and not r["truncated"] and r["output_finite"]
    per_step = _median3(r["forward_s"]["2"]["median"] for r in runs)
    assert 0.03 < per_step < 0.1                     # an SDXL UNet step at 1024 px on one large GPU
    assert sdxl.forward_time_s(1) == pytest.approx(per_step)
    assert [sdxl.forward_time_s(k) for k in range(1, 9)] == pytest.approx([k * per_step for k in range(1, 9)])
    assert 0 < sdxl.step_time_s() < 0.01 * per_step
    for g in range(2, 65):
        t = sdxl.exchange_time_s(g, g)
        assert 0 < t < per_step       # an NVLink all-gather of a few 128 KiB outputs is far below one forward
    assert sdxl.exchange_time_s(8, 8) > sdxl.exchange_time_s(2, 8)


def test_sdxl_deviation_covers_the_fixed_plan_at_8_gpus(sdxl):
    # windows of 8 from step 5 (the paper's 10% warm-up) are all available with both predictors
    for s in range(5, 50, 8):
        size = min(8, 50 - s)
        for pred in PREDICTORS:
            assert sdxl.window_deviation("parallel", start=s, size=size, predictor=pred) is not None


# ---- the prior rule's qualitative facts ------------------------------------------------------

def test_similarity_low_early_high_middle(sdxl):
    cos = sdxl.similarity.cosine
    rel = sdxl.similarity.rel_l1
    mid = len(cos) // 2
    assert cos[0] < cos[1] < cos[2] < cos[mid]
    assert rel[0] > 5 * rel[mid]
    assert rel[-1] > rel[mid]                       # a little dissimilar again at the end
    assert all(-1 <= c <= 1 for c in cos)


def test_fewer_steps_change_more_per_step():
    assert priors.drift(num_steps=20)[10] > priors.drift(num_steps=50)[25] > priors.drift(num_steps=200)[100]


@pytest.fixture(scope="module")
def bare(sdxl) -> Profile:
    """The shipped prior without its digits floor: the bare rule the qualitative tests describe."""
    dev, reuse = priors.deviation_tables(num_steps=50, max_window=sdxl.max_window, params=sdxl.provenance.deviation.params, floor=False)
    return sdxl.model_copy(update={"deviation": dev, "reuse_deviation": reuse})


def test_deviation_grows_with_offset_and_zero_at_offset_0(bare):
    sdxl = bare
    for pred in PREDICTORS:
        for s, row in enumerate(sdxl.deviation[pred].mean):
            if not row:
                continue
            assert row[0] == 0.0
            assert all(a < b for a, b in zip(row[1:], row[2:]))
            reuse = sdxl.reuse_deviation[pred].mean[s]
            assert reuse[0] > 0 and all(a < b for a, b in zip(reuse, reuse[1:]))
            assert sdxl.deviation[pred].max[s] >= row


def test_linear_better_near_worse_far(bare):
    sdxl = bare
    for s in range(2, 40):
        last, lin = sdxl.deviation["last"].mean[s], sdxl.deviation["linear"].mean[s]
        assert lin[1] < last[1]
        assert lin[7] > last[7]


def _fixed_plan_error(profile: Profile, *, warmup: int, window: int, predictor: str) -> float:
    total, s = 0.0, warmup
    while s < profile.num_steps:
        size = min(window, profile.num_steps - s)
        total += profile.window_deviation("parallel", start=s, size=size, predictor=predictor)
        s += size
    return total


def test_reuse_then_predict_beats_plain_reuse_and_early_windows_cost_more(sdxl):
    for s in range(2, 42):
        for size in (2, 4, 8):
            assert (sdxl.window_deviation("parallel", start=s, size=size, predictor="last")
                    < sdxl.window_deviation("reuse", start=s, size=size, predictor="last"))
    early = sdxl.window_deviation("parallel", start=1, size=4, predictor="last")
    middle = sdxl.window_deviation("parallel", start=25, size=4, predictor="last")
    assert early > 5 * middle


def test_linear_vs_last_reproduces_the_digits_measurements():
    """Uniform drift and gain: linear/last error ratio is 10**(-5.8/20) at windows of 2 and 10**(10.9/20) at 8."""
    flat = {"drift_early": 0.04, "drift_late": 0.04, "drift_mid": 0.04, "gain_early": 1.0}
    base = build_profile()
    prof = priors.derive_for_steps(base.model_copy(update={"provenance": base.provenance.model_copy(update={
        "deviation": priors.provenance(flat), "propagation": priors.provenance(flat)})}), num_steps=50, max_window=8)
    for window, db in ((2, 5.8), (8, -10.9)):
        ratio = (_fixed_plan_error(prof, warmup=2, window=window, predictor="linear")
                 / _fixed_plan_error(prof, warmup=2, window=window, predictor="last"))
        assert 20 * math.log10(1 / ratio) == pytest.approx(db, abs=0.01)


def test_sdxl_rule_keeps_the_sign_of_the_digits_measurements(sdxl):
    for window, better in ((2, True), (8, False)):
        lin = _fixed_plan_error(sdxl, warmup=5, window=window, predictor="linear")
        last = _fixed_plan_error(sdxl, warmup=5, window=window, predictor="last")
        assert (lin < last) == better


def test_propagation_gain_is_one_at_the_last_step_and_larger_before(sdxl):
    g = sdxl.propagation.gain
    assert g[-1] == pytest.approx(1.0) and g[0] > g[-1] and all(a >= b for a, b in zip(g, g[1:]))


# ---- derive_for_steps -----------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 20, 1000])
@pytest.mark.parametrize("J", [1, 8, 64])
def test_derive_for_steps_gives_valid_profiles(sdxl, T, J):
    prof = priors.derive_for_steps(sdxl, num_steps=T, max_window=J)
    data = yaml.safe_load(dump_profile(prof)) if T <= 20 else prof.model_dump(mode="json")   # YAML is slow for 512k floats
    again = Profile.model_validate(data)   # shapes re-checked by the validator
    assert again.num_steps == T and again.max_window == J
    assert len(again.similarity.cosine) == T - 1 and len(again.propagation.gain) == T
    assert prof.compute == sdxl.compute and prof.comm == sdxl.comm and prof.output_bytes == sdxl.output_bytes
    for table in (prof.deviation, prof.reuse_deviation):
        for pred in PREDICTORS:
            for row in table[pred].mean + table[pred].max:
                assert all(math.isfinite(v) and v >= 0 for v in row)
    if T >= 3:
        assert prof.window_deviation("parallel", start=2, size=min(J, T - 2), predictor="linear") is not None


def test_derive_back_to_the_shipped_shape_is_bit_exact(sdxl):
    wide = priors.derive_for_steps(sdxl, num_steps=1000, max_window=64)
    back = priors.derive_for_steps(wide, num_steps=50, max_window=16)
    assert back == sdxl


@functools.cache
def _built_sdxl() -> Profile:
    """The generated sdxl profile, built once (derive_for_steps returns a new profile, never edits it)."""
    return build_profile()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 120), st.integers(1, 70))
def test_derive_for_steps_property(T, J):
    prof = priors.derive_for_steps(_built_sdxl(), num_steps=T, max_window=J)
    for pred in PREDICTORS:
        for s, row in enumerate(prof.deviation[pred].mean):
            assert len(row) == (0 if s < (1 if pred == "last" else 2) else min(J, T - s))


def test_derive_refuses_measured_deviation(sdxl):
    measured = Measured(device="NVIDIA H100", date="2026-01-01")
    prof = sdxl.model_copy(update={"provenance": sdxl.provenance.model_copy(update={"deviation": measured})})
    with pytest.raises(ValueError, match="re-profile"):
        priors.derive_for_steps(prof, num_steps=20, max_window=8)
    # the lossless case: same step count, smaller max window -> rows truncated
    small = priors.derive_for_steps(prof, num_steps=50, max_window=4)
    assert small.max_window == 4 and small.deviation["last"].mean[10] == sdxl.deviation["last"].mean[10][:4]


def test_tables_follow_the_documented_rule(bare):
    """Recompute entries from the rule's pieces (drift, stand-in error) and the formulas in the docstring."""
    sdxl = bare
    p = priors.DEFAULT_PARAMS
    d = priors.drift(num_steps=50)
    h = p["t_ref"] / 50
    for pred in PREDICTORS:
        for s in (2, 17, 45):
            reuse = [p["step_latent_rms"] * h * priors.stand_in_error(d, start=s, ahead=j + 1, predictor=pred) for j in range(min(16, 50 - s))]
            assert sdxl.reuse_deviation[pred].mean[s] == pytest.approx(reuse, rel=1e-12)
            par = [p["sensitivity"] * h * math.fsum(reuse[:j]) for j in range(len(reuse))]
            assert sdxl.deviation[pred].mean[s] == pytest.approx(par, rel=1e-12, abs=0)
    assert sdxl.similarity.rel_l1 == d


def test_unknown_prior_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown prior parameter"):
        priors.similarity(num_steps=5, params={"drift_mdi": 0.1})


# ---- interconnect presets -------------------------------------------------------------------

def test_presets_exist_with_sources_and_are_immutable():
    assert set(interconnects.PRESETS) == {"nvlink", "pcie4", "pcie3", "ethernet-10g", "ethernet-1g"}
    for ic in interconnects.PRESETS.values():
        assert ic.source and ic.latency_s > 0 and 0 < ic.achievable_fraction <= 1
    with pytest.raises(TypeError):
        interconnects.PRESETS["nvlink"] = interconnects.PRESETS["pcie3"]  # type: ignore[index]
    with pytest.raises(Exception):
        interconnects.PRESETS["nvlink"].latency_s = 0.0  # type: ignore[misc]
    bw = [interconnects.PRESETS[n].bandwidth_bytes_per_s for n in ("nvlink", "pcie4", "pcie3", "ethernet-10g", "ethernet-1g")]
    assert bw == sorted(bw, reverse=True)


@pytest.mark.parametrize("name", sorted(interconnects.PRESETS))
def test_comm_for_is_a_ring_all_gather(name):
    ic = interconnects.PRESETS[name]
    comm = interconnects.comm_for(name, world_size=16)
    assert comm.preset == name and [e.ranks for e in comm.entries] == list(range(2, 17))
    for e in comm.entries:
        g = e.ranks
        n_bytes = 5 * 131072
        t = e.latency_s + n_bytes / e.bandwidth_bytes_per_s
        assert t == pytest.approx((g - 1) * ic.latency_s + (g - 1) / g * n_bytes / ic.bandwidth_bytes_per_s)


def test_comm_for_small_world_and_unknown_name():
    assert [e.ranks for e in interconnects.comm_for("pcie4", world_size=1).entries] == [2]
    with pytest.raises(UserError, match="nvlink, pcie4, pcie3, ethernet-10g, ethernet-1g"):
        interconnects.comm_for("infiniband", world_size=4)


@pytest.mark.parametrize("name", sorted(interconnects.PRESETS))
def test_pair_swap_is_one_alpha_plus_one_output_over_beta(name):
    ic = interconnects.PRESETS[name]
    pair = interconnects.pair_entry_for(name)
    assert pair.ranks == 2 and interconnects.comm_for(name, world_size=4).pair == pair
    t = pair.latency_s + 131072 / pair.bandwidth_bytes_per_s
    assert t == pytest.approx(ic.latency_s + 131072 / ic.bandwidth_bytes_per_s)
    # full duplex: a pair swaps one output each way in about what a 2-rank all-gather of 2 outputs costs
    g2 = interconnects.comm_entry_for(name, ranks=2)
    assert t == pytest.approx(g2.latency_s + 2 * 131072 / g2.bandwidth_bytes_per_s)


# ---- CFG split costs -------------------------------------------------------

def test_sdxl_prices_a_cfg_split_by_its_measurement(sdxl):
    runs = _h200_runs()
    half = _median3(r["forward_s"]["1"]["median"] for r in runs)
    assert sdxl.can_split
    assert sdxl.compute.half_forward_s == pytest.approx(half)
    assert sdxl.half_forward_time_s(2) == pytest.approx(2 * sdxl.compute.half_forward_s)
    assert sdxl.comm.pair == interconnects.pair_entry_for("nvlink")
    assert "CFG pair swap" in sdxl.provenance.comm.rule and "CFG pair swap" in sdxl.provenance.comm.reference
    # measured: eager batch 1 costs most of batch 2 (launch-bound), so a split step saves a little, not half
    ratio = sdxl.compute.half_forward_s / sdxl.forward_time_s(1)
    assert 0.85 < ratio < 1 and f"batch 1 / batch 2 = {ratio:.4f}" in sdxl.provenance.compute.notes
    assert sdxl.half_forward_time_s(1) + sdxl.pair_exchange_time_s() < sdxl.forward_time_s(1)


def test_sdxl_prior_compute_prices_a_cfg_split_by_a_stated_prior():
    from parastep.profiles.make_sdxl import HALF_FORWARD_RATIO

    prior = build_profile(compute_paths=())
    assert prior.compute.half_forward_s == pytest.approx(HALF_FORWARD_RATIO * prior.forward_time_s(1))
    assert prior.forward_time_s(1) == pytest.approx(2.496 / 30)
    prov = prior.provenance.compute
    assert prov.source == "prior" and prov.params[priors.HALF_FORWARD_RATIO] == HALF_FORWARD_RATIO
    assert priors.HALF_FORWARD_RULE in prov.rule and "assumption, not measured" in prov.rule
    assert prior.half_forward_time_s(1) + prior.pair_exchange_time_s() < 0.53 * prior.forward_time_s(1)
    # only the compute part differs from the shipped profile
    shipped = load_profile(SDXL)[0]
    assert prior.model_copy(update={"compute": shipped.compute, "name": shipped.name,
                                    "provenance": prior.provenance.model_copy(update={"compute": shipped.provenance.compute})}) == shipped


def test_derive_for_steps_keeps_the_split_costs(sdxl):
    other = priors.derive_for_steps(sdxl, num_steps=20, max_window=8)
    assert other.compute.half_forward_s == sdxl.compute.half_forward_s and other.comm.pair == sdxl.comm.pair


def test_half_forward_prior_rule():
    assert priors.half_forward_prior(0.1, ratio=0.52) == pytest.approx(0.052)
    rule, params = priors.half_forward_rule(0.6, why="because")
    assert rule.startswith(priors.HALF_FORWARD_RULE) and "0.6 x" in rule and params == {priors.HALF_FORWARD_RATIO: 0.6}
    for bad in (0.0, -0.1, 1.2, float("nan")):
        with pytest.raises(ValueError, match="half-forward ratio"):
            priors.half_forward_prior(0.1, ratio=bad)


def test_digits_profile_prices_a_cfg_split():
    """The shipped digits profile: a half forward (measured half/whole ratio times the forward) and
    a gloo pair swap measured in lock step with the real half forward, both stated in the
    provenance; the measured parts are labelled measured, so a G = 2 plan is priced by no prior."""
    digits = load_profile(SHIPPED_DIR / "digits.yaml")[0]
    assert digits.can_split
    ratio = digits.compute.half_forward_s / digits.forward_time_s(1)
    assert 0.5 < ratio < 0.9                           # a CPU forward at batch 1 is well above half of batch 2
    assert "half/whole" in digits.provenance.compute.notes
    pair = digits.comm.pair
    assert pair.ranks == 2 and pair.latency_s > 0 and pair.bandwidth_bytes_per_s > 0 and pair.source == "measured"
    assert "CFG pair swap measured" in digits.provenance.comm.rule and "lock step" in digits.provenance.comm.rule
    # the wait for the slower half is part of the swap's price: far above a barrier-separated swap of 512 bytes
    assert digits.pair_exchange_time_s() > 1e-3
    assert digits.comm_entry(2).source == "measured"
    assert digits.prior_parts_for(2, uses_split=True) == []


def test_can_split_needs_both_costs(sdxl):
    no_half = sdxl.model_copy(update={"compute": sdxl.compute.model_copy(update={"half_forward_s": None})})
    no_pair = sdxl.model_copy(update={"comm": sdxl.comm.model_copy(update={"pair": None})})
    assert sdxl.can_split and not no_half.can_split and not no_pair.can_split
    with pytest.raises(ValueError, match="no half-forward time"):
        no_half.half_forward_time_s(1)
    with pytest.raises(ValueError, match="no pair exchange cost"):
        no_pair.pair_exchange_time_s()
    assert no_half.pair_exchange_time_s() == pytest.approx(5e-6 + 131072 / 360e9)


def test_preset_comm_serves_any_world_size(sdxl):
    # beyond the table, Profile.comm_entry reuses the largest entry of a preset
    assert sdxl.comm_entry(128) == sdxl.comm_entry(64)


# ---- YAML round trip, malformed input ------------------------------------------------------

def test_profile_yaml_round_trip(tmp_path, sdxl):
    path = tmp_path / "p.yaml"
    write_profile(sdxl, path)
    again, sha = load_profile(path)
    assert again == sdxl
    assert path.read_text() == SDXL.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]


@pytest.mark.parametrize("case", ["missing", "truncated", "not-a-profile", "bad-row", "unknown-key", "negative"])
def test_malformed_profile_is_a_user_error(tmp_path, case):
    path = tmp_path / "p.yaml"
    text = SDXL.read_text()
    if case == "truncated":
        path.write_text(text[: len(text) // 3].rsplit("[", 1)[0] + "[0.1, 0.")
    elif case == "not-a-profile":
        path.write_text("parastep_schedule: 1\nmodel: sdxl\n")
    elif case == "bad-row":
        data = yaml.safe_load(text)
        data["deviation"]["last"]["mean"][5].append(0.5)
        path.write_text(yaml.safe_dump(data))
    elif case == "unknown-key":
        path.write_text(text + "colour: blue\n")
    elif case == "negative":
        data = yaml.safe_load(text)
        data["compute"]["step_s"] = -1.0
        path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert info.value.exit_code == 2


# ---- the digits floor ---------------------------------------------------------------------

def _digits_q90(sdxl):
    """The digits window errors the floor was taken from, if the measured digits profile is here."""
    from parastep.profiles.make_sdxl import digits_floor

    for path in (SHIPPED_DIR / "digits.yaml", "/tmp/digits50.yaml"):
        try:
            digits = load_profile(path)[0]
        except Exception:
            continue
        if digits.output_errors is not None and priors.floor_params(digits) == {
                k: v for k, v in sdxl.provenance.deviation.params.items() if k.startswith(priors.FLOOR)}:
            return digits
    pytest.skip("the measured digits profile the floor was taken from is not available")


def test_floor_holds_window_by_window_against_the_digits_measurements(sdxl):
    digits = _digits_q90(sdxl)
    p = sdxl.provenance.deviation.params
    rms, drms = p["floor.output_rms"], p["floor.digits_output_rms"]
    assert digits.num_steps == sdxl.num_steps == 50
    for kind in ("parallel", "reuse"):
        for pred in PREDICTORS:
            for s in range(50):
                for w in range(1, digits.max_window + 1):
                    e = digits.window_errors(kind, start=s, size=w, predictor=pred)
                    if e is None:
                        continue
                    q = priors._q90(e)
                    mine = sdxl.window_deviation(kind, start=s, size=w, predictor=pred)
                    assert mine >= rms * q / drms * (1 - 1e-9), (kind, pred, s, w)
                    if (kind, pred) != ("parallel", "last") and w + s <= 49:
                        ref = digits.window_errors("parallel", start=s, size=max(w, 2), predictor="last")
                        paper = sdxl.window_deviation("parallel", start=s, size=max(w, 2), predictor="last")
                        if ref is not None and priors._q90(ref) > 0:
                            assert mine >= q / priors._q90(ref) * paper * (1 - 1e-9), (kind, pred, s, w)


def test_floor_never_below_the_bare_rule_and_params_stored(sdxl, bare):
    assert priors.has_floor(sdxl.provenance.deviation.params) and "digits floor" in sdxl.provenance.deviation.rule
    assert not priors.has_floor(sdxl.provenance.propagation.params)
    for kind in ("parallel", "reuse"):
        for pred in PREDICTORS:
            for s in range(50):
                for w in range(1, 17):
                    a = sdxl.window_deviation(kind, start=s, size=w, predictor=pred)
                    b = bare.window_deviation(kind, start=s, size=w, predictor=pred)
                    assert (a is None) == (b is None)
                    if a is not None:
                        assert a >= b * (1 - 1e-12)


@pytest.mark.parametrize("T,J", [(20, 8), (100, 16), (1000, 64)])
def test_derive_for_steps_keeps_the_floor(sdxl, T, J):
    prof = priors.derive_for_steps(sdxl, num_steps=T, max_window=J)
    p = prof.provenance.deviation.params
    assert priors.has_floor(p)
    for kind in ("parallel", "reuse"):
        for pred in PREDICTORS:
            for s in range(2, T, max(1, T // 17)):
                for w in (1, 2, 3, J // 2, J):
                    v = prof.window_deviation(kind, start=s, size=w, predictor=pred)
                    if v is None:
                        continue
                    assert v >= priors.window_floor(p, kind, pred, start=s, size=w, num_steps=T) * (1 - 1e-9)


def test_128_gpu_plan_from_the_prior_stays_within_the_evidence(capsys):
    """A prior must not be more aggressive than the evidence behind it: by default `plan` caps the
    windows at the prior's max_window (what it was built for), so 128 GPUs cannot plan 1 forward
    plus a 36-step reuse chain (what the uncapped prior did: 23.6x)."""
    from parastep.cli import main
    from parastep.schedules.io import schedule_from_dict

    assert main(["plan", "--model", "sdxl", "--gpus", "128"]) == 0
    s = schedule_from_dict(yaml.safe_load(capsys.readouterr().out))
    prof, _ = resolve_profile("sdxl")
    assert s.max_window == prof.max_window
    assert all(b - a <= prof.max_window for a, b in s.window_bounds())
    computing = [w for w in s.windows if w.kind != "reuse"]
    assert len(computing) >= 50 / prof.max_window, s.windows
