"""BatchStep (a batched parallel window: each rank's offsets in one denoiser call), through the hooks.

- bit for bit equal to ``reference_impl.reference_latents`` with its own batching loop (``guided_batch``:
  the inputs stacked, one timestep per row, the text states repeated), on five schedulers;
- within 1e-5 (relative to the latents' largest magnitude) of the same schedule unbatched;
- one denoiser call per rank per window (a spy on the module's real forward);
- every tiny pipeline class batches (no fallback) and stays close to its unbatched run;
- a callback that edits the latents inside a window makes the later offsets' calls differ from the
  prediction: they are computed alone (counted) and the result equals the unbatched run's.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_impl as R
import tiny_pipelines as TP
from parastep.executor.exchange import LocalExchange
from parastep.executor.hooks import ParaStepConfig, apply_parastep, remove_parastep
from parastep.executor.inputs import inference_steps_for

FIVE = ("ddim", "euler", "euler-a", "dpm++2m", "ddpm")
# steps 0-1 exact, a 4-offset window on one rank, a 5-offset window over two ranks (linear), exact end
WINDOWS = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "exact"},
           {"start": 2, "kind": "parallel", "placement": [0, 0, 0, 0]},
           {"start": 6, "kind": "parallel", "placement": [0, 1, 0, 1, 1], "predictor": "linear"},
           {"start": 11, "kind": "exact"}]
T = 12


def _batched(windows: list[dict], batch: bool = True) -> list[dict]:
    return [dict(w, batch=batch) if w["kind"] == "parallel" else w for w in windows]


def _run(pipe, windows, *, num_steps: int, world_size: int, call=None):
    sched = R.make_schedule(windows, num_steps=num_steps, world_size=world_size, output_bytes=4)
    handle = apply_parastep(pipe, ParaStepConfig(windows=sched.windows, num_steps=num_steps, exchange=LocalExchange()))
    try:
        out = call(pipe) if call is not None else R.run_plain(pipe, num_steps=num_steps)
    finally:
        remove_parastep(pipe)
    return out, handle


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("scheduler", FIVE)
def test_batched_equals_batching_reference_and_is_close_to_unbatched(scheduler):
    pipe = R.tiny_sd_pipeline(scheduler)
    wins = _batched(WINDOWS)
    want = R.reference_latents(pipe, R.make_schedule(wins, num_steps=T, world_size=2, output_bytes=4).windows, num_steps=T)
    got, handle = _run(pipe, wins, num_steps=T, world_size=2)
    assert torch.equal(got, want), (got - want).abs().max()
    stats = {s.start: s for s in handle.stats()}
    assert (stats[2].calls, stats[6].calls) == (1, 2)          # one call per rank per window
    assert (stats[2].forwards, stats[6].forwards) == (4, 5)    # every offset computed
    assert not any(s.batch_fallbacks for s in handle.stats()) and not handle.batch_fallback_reasons
    unbatched, _ = _run(R.tiny_sd_pipeline(scheduler), _batched(WINDOWS, False), num_steps=T, world_size=2)
    assert _rel(got, unbatched) <= 1e-5
    assert not torch.equal(got, R.run_plain(R.tiny_sd_pipeline(scheduler), num_steps=T))   # windows do something


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), scheduler=st.sampled_from(FIVE), num_steps=st.integers(4, 10),
       world_size=st.sampled_from([1, 2, 3]))
def test_random_batched_schedules_match_the_batching_reference(seed, scheduler, num_steps, world_size):
    """Random windows, placements sharing ranks, half of the parallel windows batched; world_size 1 too."""
    pipe = R.tiny_sd_pipeline(scheduler)
    wins = R.random_windows(random.Random(seed), num_steps=num_steps, world_size=world_size, max_window=5, batch=True)
    sched = R.make_schedule(wins, num_steps=num_steps, world_size=world_size, output_bytes=4)
    want = R.reference_latents(pipe, sched.windows, num_steps=num_steps)
    got, handle = _run(pipe, wins, num_steps=num_steps, world_size=world_size)
    assert torch.equal(got, want), (wins, (got - want).abs().max())
    for w, s in zip(wins, handle.stats()):
        if w["kind"] == "parallel":
            ranks = set(w["placement"])
            assert s.calls == (len(ranks) if w.get("batch") else len(w["placement"])), (w, s)
            assert s.forwards == len(w["placement"]) and s.batch_fallbacks == 0


def test_spy_sees_one_denoiser_call_per_rank_per_window():
    """Counted on the module's own forward (below the hooks), not on the hooks' statistics."""
    pipe = R.tiny_sd_pipeline("ddim")
    real = pipe.unet.forward
    rows: list[int] = []

    def spy(*args, **kwargs):
        rows.append(int(args[0].shape[0]))
        return real(*args, **kwargs)

    pipe.unet.forward = spy
    _run(pipe, _batched(WINDOWS), num_steps=T, world_size=2)
    # steps 0, 1: one call each (batch 2 = CFG); window at 2: one call of 4 offsets x 2 rows; window at 6:
    # rank 0 holds offsets 0, 2 (4 rows), rank 1 offsets 1, 3, 4 (6 rows); step 11: one call
    assert rows == [2, 2, 8, 4, 6, 2]


@pytest.mark.parametrize("name,scheduler", TP.supported_pairs())
def test_every_tiny_pipeline_batches_without_fallback(name, scheduler):
    """Each registered pipeline class: its call form is recognised (no fallback, one call per rank per
    window) and the batched run stays within 1e-4 of the unbatched one (one plain call of these random
    models at twice its batch already differs by up to 8e-7 of its largest output, measured here, and
    guidance scales of 3.5-7.5 amplify that over the steps)."""
    steps = 6
    n = steps + 1 if scheduler == "PNDMScheduler" else steps
    wins = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, 0, 1]},
            {"start": 4, "kind": "parallel", "placement": [0] * (n - 4)}]
    kw = TP.tiny_call_kwargs(name, num_inference_steps=steps)

    def call(pipe):
        return pipe(prompt="a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images

    assert inference_steps_for(TP.make_tiny_pipeline(name, scheduler=scheduler).scheduler, n) == steps
    got, handle = _run(TP.make_tiny_pipeline(name, scheduler=scheduler), _batched(wins), num_steps=n, world_size=2, call=call)
    assert handle.batch_fallback_reasons == [] and [s.calls for s in handle.stats()] == [1, 2, 1]
    want, _ = _run(TP.make_tiny_pipeline(name, scheduler=scheduler), _batched(wins, False), num_steps=n, world_size=2, call=call)
    assert _rel(got, want) <= 1e-4


def test_a_latent_editing_callback_falls_back_to_single_calls():
    """The callback changes the latents the pipeline feeds the denoiser inside a batched window: those
    offsets are not the predicted calls, so they are computed alone, and the run equals the unbatched one."""
    def edit(pipe, i, t, kwargs):
        if i == 3:                      # inside the window at 2: offsets 2 and 3 see edited inputs
            return {"latents": kwargs["latents"] * 0.9}
        return {}

    def call(pipe):
        pos, neg = R.prompt_embeds()
        return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=T, guidance_scale=5.0,
                    height=16, width=16, output_type="latent", generator=torch.Generator().manual_seed(0),
                    callback_on_step_end=edit).images

    got, handle = _run(R.tiny_sd_pipeline("ddim"), _batched(WINDOWS), num_steps=T, world_size=2, call=call)
    stats = {s.start: s for s in handle.stats()}
    assert stats[2].batch_fallbacks == 2 and stats[2].calls == 3 and stats[6].batch_fallbacks == 0
    assert any("differ from the predicted" in r for r in handle.batch_fallback_reasons)
    want, _ = _run(R.tiny_sd_pipeline("ddim"), _batched(WINDOWS, False), num_steps=T, world_size=2, call=call)
    assert _rel(got, want) <= 1e-5
    unedited, _ = _run(R.tiny_sd_pipeline("ddim"), _batched(WINDOWS), num_steps=T, world_size=2)
    assert _rel(got, unedited) > 1e-3      # the edit mattered: a batch that ignored it would be wrong
