"""Distributed tests of the executor (gloo, 1 thread per rank): 2 and 4 ranks vs single process.

One spawn per world size runs many cases (process start-up dominates the cost). Every rank
saves its final latents; the test checks, bit for bit:

- every rank ends with the same latents;
- tiny SD pipeline (DDIM, Euler, DPM-Solver++ 2M, and the stochastic Euler ancestral, DDPM,
  DPM-Solver++ 2M SDE with their noise replayed): equal to ``reference_impl.reference_latents`` (the
  independent loop of docs/design.md §1);
- every registered tiny pipeline (sd15, sdxl, sd3, pixart-sigma, flux) with each scheduler
  it supports: an exact-only schedule equals the plain pipeline; a random schedule equals
  ``reference_impl.reference_latents_tiny`` (each pipeline's conditioning and guidance written
  out in the test reference, not the executor);
- bytes received, summed over ranks, equal ``implied_totals``; forwards per rank too;
- CFG split schedules (tiny SD) likewise (the spawns are shared to keep process start-up paid once);
- batched windows (BatchStep, tiny SD, five schedulers) likewise, against the reference's own batching.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import reference_impl as R
import tiny_pipelines as TP
from parastep.executor.inputs import inference_steps_for
from parastep.executor.hooks import ParaStepConfig, apply_parastep, remove_parastep
from parastep.executor.launch import launch
from parastep.schedules.check import implied_totals

pytestmark = [pytest.mark.distributed,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]


def _build(case: dict):
    if case["pipe"] == "sd-tiny":
        return R.tiny_sd_pipeline(case["scheduler"])
    return TP.make_tiny_pipeline(case["pipe"], scheduler=case["scheduler"])


def _run(pipe, case: dict, exchange) -> tuple[torch.Tensor, object]:
    n = case["num_steps"]
    sched = R.make_schedule(case["windows"], num_steps=n, world_size=case["world_size"], output_bytes=4)
    handle = apply_parastep(pipe, ParaStepConfig(windows=sched.windows, num_steps=n, exchange=exchange))
    try:
        if case["pipe"] == "sd-tiny":
            lat = R.run_plain(pipe, num_steps=n)
        else:
            steps = inference_steps_for(pipe.scheduler, n)
            kw = TP.tiny_call_kwargs(case["pipe"], num_inference_steps=steps)
            lat = pipe(prompt="a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images
    finally:
        remove_parastep(pipe)
    return lat, handle


def dist_worker(ctx, job) -> None:
    from parastep.executor.exchange import DistExchange

    out_dir, cases = job
    for k, case in enumerate(cases):
        lat, handle = _run(_build(case), case, DistExchange())
        torch.save({"latents": lat, "forwards": handle.forwards,
                    "bytes": sum(s.bytes_received for s in handle.stats())}, Path(out_dir) / f"{k}_{ctx.rank}.pt")


def _steps(case_pipe: str, scheduler: str) -> int:
    if case_pipe == "sd-tiny":
        return 8
    return 7 if scheduler == "PNDMScheduler" else 6   # PNDM (PLMS) runs one step more than asked


def _cases(world_size: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for sch in R.SCHEDULERS + R.STOCHASTIC:
        for _ in range(2 if sch in R.SCHEDULERS else 1):
            n = rng.randint(6, 10)
            cases.append({"pipe": "sd-tiny", "scheduler": sch, "num_steps": n, "world_size": world_size,
                          "windows": R.random_windows(rng, num_steps=n, world_size=world_size, max_window=world_size + 1)})
    pairs = TP.supported_pairs() if world_size == 2 else [("sd3", "FlowMatchEulerDiscreteScheduler"),
                                                           ("flux", "FlowMatchEulerDiscreteScheduler")]
    for name, sch in pairs:
        n = _steps(name, sch)
        if world_size == 2:
            cases.append({"pipe": name, "scheduler": sch, "num_steps": n, "world_size": world_size,
                          "windows": [{"start": i, "kind": "exact"} for i in range(n)]})
        cases.append({"pipe": name, "scheduler": sch, "num_steps": n, "world_size": world_size,
                      "windows": R.random_windows(rng, num_steps=n, world_size=world_size, max_window=world_size + 1,
                                                  kinds=("parallel", "parallel", "reuse"))})
    split_rng = random.Random(seed + 1000)
    for _ in range(2):   # CFG splits (exact splits, offsets on rank pairs): tests/test_cfg_split.py has the rest
        n = split_rng.randint(5, 8)
        cases.append({"pipe": "sd-tiny", "scheduler": "ddim", "num_steps": n, "world_size": world_size,
                      "windows": R.random_split_windows(split_rng, num_steps=n, world_size=world_size,
                                                        max_window=world_size + 1, kinds=("parallel", "parallel", "exact"))})
    batch_rng = random.Random(seed + 2000)
    for sch in ("ddim", "euler", "euler-a", "dpm++2m", "ddpm"):   # BatchStep: tests/integration/test_batchstep.py has the rest
        n = batch_rng.randint(6, 10)
        wins = R.random_windows(batch_rng, num_steps=n, world_size=world_size, max_window=2 * world_size + 1,
                                kinds=("parallel", "parallel", "exact"), batch=True)
        cases.append({"pipe": "sd-tiny", "scheduler": sch, "num_steps": n, "world_size": world_size, "windows": wins})
    return cases


def _expected(case: dict) -> torch.Tensor:
    torch.set_num_threads(1)
    pipe = _build(case)
    if case["pipe"] == "sd-tiny":
        sched = R.make_schedule(case["windows"], num_steps=case["num_steps"], world_size=case["world_size"], output_bytes=4)
        return R.reference_latents(pipe, sched.windows, num_steps=case["num_steps"])
    steps = inference_steps_for(pipe.scheduler, case["num_steps"])
    kw = TP.tiny_call_kwargs(case["pipe"], num_inference_steps=steps)
    lat = R.reference_latents_tiny(case["pipe"], pipe, case["windows"], num_steps=case["num_steps"], inference_steps=steps,
                                   prompt="a red cat", seed=0, call_kwargs=kw)
    if all(w["kind"] == "exact" for w in case["windows"]):   # and the exact-only reference is the plain pipeline
        plain = pipe(prompt="a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images
        assert torch.equal(lat, plain), f"exact-only reference differs from the plain pipeline: {case}"
    return lat


@pytest.mark.parametrize("world_size,seed", [(2, 11), (4, 12)])
def test_distributed_runs_match_single_process(tmp_path, world_size, seed):
    cases = _cases(world_size, seed)
    launch(dist_worker, (str(tmp_path), cases), world_size=world_size, device="cpu", threads=1, timeout_s=120)
    threads = torch.get_num_threads()
    try:
        for k, case in enumerate(cases):
            got = [torch.load(tmp_path / f"{k}_{r}.pt") for r in range(world_size)]
            for r in range(1, world_size):
                assert torch.equal(got[r]["latents"], got[0]["latents"]), f"rank {r} differs from rank 0: {case}"
            want = _expected(case)
            assert torch.equal(got[0]["latents"], want), (case, (got[0]["latents"] - want).abs().max())
            sched = R.make_schedule(case["windows"], num_steps=case["num_steps"], world_size=world_size, output_bytes=4)
            one = want.numel() * want.element_size()     # batch 1: one guided output = one latent tensor
            totals = implied_totals(sched.windows, world_size=world_size, output_bytes=one)
            assert sum(g["bytes"] for g in got) == totals.bytes_exchanged, case
            assert [g["forwards"] for g in got] == totals.forwards_per_rank, case
    finally:
        torch.set_num_threads(threads)
