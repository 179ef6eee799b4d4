"""The ``parastep`` command line (docs/design.md §8). Parsing only; each command lives in its stage.

Every command's implementation is ``run(args) -> int`` in ``<stage>/command.py`` and is
imported lazily, so ``parastep validate`` never pays for torch or ortools. ``UserError``
becomes one line on stderr and its exit code (2, or 1 for an invalid schedule). Anything else
(a bug, an unhandled case) becomes one line and exit 1, with a pointer to ``parastep --debug``
(or ``PARASTEP_DEBUG=1``), which prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .errors import UserError, one_line

COMMANDS = {
    "plan": "parastep.profiler.plan_command",      # planner.request, plus --verify (profiler.verify runs the executor)
    "validate": "parastep.schedules.command",
    "simulate": "parastep.schedules.command",
    "schema": "parastep.schedules.command",
    "exec": "parastep.executor.command",
    "evaluate": "parastep.executor.evaluate_command",
    "profile": "parastep.profiler.command",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UserError(f"{message} (see 'parastep {self.prog.split()[-1]} --help')" if " " in self.prog else f"{message} (see 'parastep --help')")


def _parsed(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None


def _positive_int(text: str) -> int:
    value = _parsed(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


MAX_TIMEOUT_S = 1e6    # ~11.6 days; beyond it C++ timeouts in nanoseconds come close to overflowing


def _timeout_s(text: str) -> float:
    value = _parsed(text, float, "a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"expected seconds > 0 and at most {MAX_TIMEOUT_S:.0f}, got {text}; pass e.g. --timeout 300")
    return value


def _seed(text: str) -> int:
    """A seed in 0 .. 2**64 - 1 (torch.Generator.manual_seed also takes negatives, as the same seeds
    plus 2**64: one name per noise keeps reports comparable)."""
    value = _parsed(text, int, "an integer seed")
    if not 0 <= value < 2 ** 64:
        raise argparse.ArgumentTypeError(f"seed {text} is out of range; pass an integer from 0 to 2**64 - 1")
    return value


def _float(text: str) -> float:
    return _parsed(text, float, "a number")


def _psnr_db(text: str) -> float:
    value = _parsed(text, float, "a PSNR in dB")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a PSNR above 0 dB, got {text}; pass e.g. --min-psnr 35")
    return value


def _strength(text: str) -> float:
    value = _parsed(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a strength in (0, 1], got {text}; pass e.g. --strength 0.6")
    return value


MAX_PIXELS = 1 << 20   # an image side (the schedule contract's bound)


def _pixels(text: str) -> int:
    value = _parsed(text, int, "a size in pixels")
    if not 1 <= value <= MAX_PIXELS:
        raise argparse.ArgumentTypeError(f"expected pixels from 1 to {MAX_PIXELS}, got {text}")
    return value


def _add_conditioning(cmd: argparse.ArgumentParser, *, recorded_in: str | None, labels_default: str) -> None:
    """The flags that condition a run and size its output; which ones a pipeline takes comes from
    its ``__call__`` signature, checked before it loads. ``recorded_in`` ("the schedule" for exec
    and evaluate): the size, frames and strength are the ones it records, the only values allowed;
    None (profile): they default to the pipeline's own and the profile records them."""
    def default(own: str) -> str:
        return f"default and only value: {recorded_in}'s" if recorded_in else f"default: {own}; recorded in the profile"

    cmd.add_argument("--class-label", action="append", dest="class_labels", metavar="L",
                     help=f"class-conditional pipelines (DiT): a class index or the pipeline's label name; repeatable "
                          f"(default: {labels_default})")
    cmd.add_argument("--image", metavar="PATH", help="img2img pipelines: the input image, PNG or JPEG (default: none)")
    strength = default("the pipeline's own")
    size = default("the registry's size for the model, else the pipeline's")
    frames = default("the pipeline's")
    cmd.add_argument("--strength", type=_strength, metavar="S",
                     help=f"img2img: how much of the schedule runs, 0 < S <= 1 (with --image; {strength})")
    cmd.add_argument("--height", type=_pixels, help=f"output height in pixels (with --width; {size})")
    cmd.add_argument("--width", type=_pixels, help=f"output width in pixels (with --height; {size})")
    cmd.add_argument("--num-frames", type=_positive_int, dest="num_frames", metavar="F",
                     help=f"video pipelines: frames per video ({frames})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="parastep", description="Planned parallel denoising for diffusion models.")
    p.add_argument("--debug", action="store_true",
                   help="on an unexpected error, print the traceback (also PARASTEP_DEBUG=1) (flag; default: off)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = sub.add_parser("plan", help="profile -> optimal schedule (YAML on stdout)")
    plan.add_argument("--model", help="registry name (e.g. sdxl, digits): plan with its shipped profile (default: none; "
                      "not needed with --profile)")
    plan.add_argument("--gpus", type=_positive_int, required=True, help="world size: ranks the plan runs on (required)")
    plan.add_argument("--steps", type=_positive_int, help="number of denoising steps (default: the profile's)")
    q = plan.add_mutually_exclusive_group()
    q.add_argument("--budget", type=_nonneg_float, help="per-image bound on the predicted output deviation (latent RMS); "
                   "every calibration image unless --coverage (default: none: each image at most its error under the "
                   "fixed plan, so the plan never loses to it)")
    q.add_argument("--min-psnr", type=_psnr_db, dest="min_psnr", help="target PSNR (dB) of each image vs the sequential output "
                   "of the same seed; needs a calibrated profile (default: none)")
    plan.add_argument("--coverage", type=_float, help="share of images that must meet --min-psnr/--budget (default: 0.9 with "
                      "--min-psnr, 1 with --budget)")
    plan.add_argument("--per-image-bound", action="store_true", dest="per_image_bound",
                      help="with --min-psnr: plan to the per-image conformal bound (each of the required calibration images "
                           "at or above the target with probability 0.9), not to the predicted share of images; slower, "
                           "with a finite-sample statement (flag; default: off)")
    plan.add_argument("--policy", choices=["optimal", "fixed", "fixed-batch"], default="optimal",
                      help="optimal: the solver's fastest plan within the quality statement; fixed: the hand plan "
                           "(--warmup exact steps, then windows of min(gpus, max window) steps); fixed-batch: the hand plan "
                           "with two offsets per GPU per window in one batched call (default: %(default)s)")
    plan.add_argument("--warmup", type=_positive_int, help="exact steps before the first parallel window of the fixed plan, "
                      "which also sets the default statement's bounds (default: 10%% of steps, at least 1)")
    plan.add_argument("--max-window", type=_positive_int, dest="max_window", help="largest window (default: min(gpus, profile "
                      "max); on 1 GPU with a batch curve in the profile, the profile max)")
    plan.add_argument("--profile", help="profile YAML (default: the shipped one for --model)")
    plan.add_argument("--interconnect", help="interconnect preset for exchange costs: nvlink, pcie4, pcie3, ethernet-10g or "
                      "ethernet-1g (default: none: the profile's own exchange costs)")
    plan.add_argument("--time-limit", type=_nonneg_float, dest="time_limit_s", default=10.0,
                      help="solver time limit in seconds for branch and bound or CP-SAT; past it the best plan found is "
                           "emitted as FEASIBLE with its proven bound and gap (default: %(default)g)")
    plan.add_argument("--workers", type=_positive_int, default=None, help="CP-SAT search workers (default: the CPU count)")
    plan.add_argument("--seed", type=int, default=0, help="CP-SAT random seed (default: %(default)s)")
    plan.add_argument("--try-fewer-gpus", action="store_true", dest="try_fewer_gpus",
                      help="also plan smaller world sizes (ranks left idle) and keep the fastest plan; one solve per size "
                           "not dominated (flag; default: plan on all --gpus)")
    plan.add_argument("--cfg-split", choices=["auto", "off"], default="auto", dest="cfg_split",
                      help="auto: windows may split the CFG halves over rank pairs where the profile prices it (lossless); "
                           "off: never (default: %(default)s)")
    plan.add_argument("--batch", choices=["auto", "off"], default="auto",
                      help="auto: a parallel window may run each GPU's offsets in one batched call where the profile's batch "
                           "curve makes it faster (BatchStep); off: never (default: %(default)s)")
    plan.add_argument("--solver", choices=["auto", "branch-and-bound", "cp-sat", "dp"], default="auto",
                      help="auto: for per-image statements over a profile's calibration samples the exact "
                           "Lagrangian branch and bound (proves optimality where CP-SAT stalls), the exact DP where one "
                           "budget says it all (priors); branch-and-bound, cp-sat or dp to force one (default: %(default)s)")
    plan.add_argument("--verify", type=int, default=0, metavar="N", help="run the plan on N held-out images in one process "
                      "and record per-image PSNR vs sequential in quality.measured; re-plan if it misses its target, and for "
                      "--min-psnr try a faster plan if it meets it with over 3 dB to spare, kept only if it meets it too; "
                      "at most 3 plans measured (default: %(default)s: not run)")
    plan.add_argument("--model-path", dest="model_path", help="pipeline folder for --verify (default: the registry's)")
    plan.add_argument("--deterministic", action="store_true",
                      help="CP-SAT: reproducible result for a given --seed and --workers (interleaved search) "
                           "(flag; default: off, the workers race)")

    val = sub.add_parser("validate", help="check every invariant of a schedule (exit 0 valid, 1 invalid)")
    val.add_argument("schedule", help="schedule YAML (required)")

    sim = sub.add_parser("simulate", help="latency of a schedule from its own op graph")
    sim.add_argument("schedule", help="schedule YAML (required)")
    sim.add_argument("--profile", help="profile YAML (default: the shipped profile for the schedule's model)")
    sim.add_argument("--interconnect", help="interconnect preset overriding the profile's exchange costs (default: the "
                     "preset the plan was priced with (plan --interconnect), else the profile's own costs)")
    sim.add_argument("--plot", help="write the per-rank timeline to this PNG (default: none)")

    sch = sub.add_parser("schema", help="print the JSON Schema of a file format")
    sch.add_argument("what", choices=["schedule", "profile"], help="which file format (required)")

    ex = sub.add_parser("exec", help="run a schedule on world_size processes")
    ex.add_argument("schedule", help="schedule YAML (required)")
    ex.add_argument("--prompt", action="append", help="prompt (or class label for digits); repeat for a batch "
                    "(default: one image of the pipeline's stock prompt, '7' on digits)")
    _add_conditioning(ex, recorded_in="the schedule", labels_default="class 0")
    ex.add_argument("--seed", type=_seed, default=0, help="seed of the initial noise, 0 .. 2**64 - 1 (default: %(default)s)")
    ex.add_argument("--out", default="out", help="output folder for the images and report.json (default: %(default)s)")
    ex.add_argument("--reference", action="store_true",
                    help="also run the sequential pipeline and report speedup/PSNR/SSIM (flag; default: off)")
    ex.add_argument("--model-path", dest="model_path", help="local folder with the pipeline (default: registry / HF cache)")
    ex.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: cuda where available, else cpu (default: %(default)s)")
    ex.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads per rank on CPU (default: %(default)s)")
    ex.add_argument("--timeout", type=_timeout_s, default=300.0, dest="timeout_s",
                    help="collective timeout in seconds (default: %(default)g)")
    ex.add_argument("--repeats", type=_positive_int, default=1,
                    help="timed runs of each side after a warm-up; latency and speedup are their medians (default: %(default)s)")

    ev = sub.add_parser("evaluate", help="a schedule's PSNR/SSIM vs sequential on one device, per prompt x seed")
    ev.add_argument("schedule", help="schedule YAML (required)")
    ev.add_argument("--prompt", action="append", help="prompt (or class label for digits); repeatable (default: 0-9 on "
                    "digits, the pipeline's stock prompt on text pipelines)")
    _add_conditioning(ev, recorded_in="the schedule", labels_default="classes 0 and 1")
    ev.add_argument("--seed", type=_seed, action="append", help="seed; repeatable (default: 1000 and 1001)")
    ev.add_argument("--model-path", dest="model_path", help="local folder with the pipeline (default: registry / HF cache)")
    ev.add_argument("--out", required=True, help="output folder for quality.json (required)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: cuda where available, else cpu (default: %(default)s)")
    ev.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads on CPU (default: %(default)s)")

    pr = sub.add_parser("profile", help="measure a model: deviations, similarity, compute and exchange costs")
    pr.add_argument("--model", help="registry name (e.g. digits, sdxl); not needed with --model-path (default: none: "
                    "the profile's model is the --model-path folder's absolute path)")
    pr.add_argument("--model-path", dest="model_path", help="a diffusers pipeline folder (save_pretrained); enough on its "
                    "own (default: registry / HF cache for --model)")
    pr.add_argument("--gpus", type=_positive_int, default=2,
                    help="largest world size: exchange costs for 2..G ranks (default: %(default)s)")
    pr.add_argument("--steps", type=_positive_int, help="denoising steps actually run; an img2img call asks for about "
                    "steps / strength (default: the registry's steps for the model, else 50)")
    pr.add_argument("--max-window", type=_positive_int, dest="max_window",
                    help="largest window the quality tables hold (default: min(max(gpus, 8), steps))")
    pr.add_argument("--out", required=True, help="where to write the profile YAML (required)")
    pr.add_argument("--plot", help="write similarity and deviation curves to this PNG (default: none)")
    pr.add_argument("--interconnect", help="preset to use for ranks beyond this machine's devices (default: none: every "
                    "rank count measured here; on CPU the processes share the cores)")
    pr.add_argument("--seed", type=_seed, action="append", dest="seeds", help="seed; repeatable (default: 0 and 1)")
    pr.add_argument("--prompt", action="append", dest="prompts", help="prompt or class; repeatable (default: 0-9 on digits, "
                    "three stock prompts on text pipelines)")
    _add_conditioning(pr, recorded_in=None, labels_default="classes 0 and 1")
    pr.add_argument("--calibration-samples", "--verify", type=int, default=None, dest="verify", metavar="N",
                    help="plans the optimizer picks, run on the calibration images to fit the PSNR calibration that "
                    "plan --min-psnr needs, at least 6 (default: 24, and more are sampled while too few images are lossy)")
    pr.add_argument("--no-calibration", action="store_true", dest="no_calibration",
                    help="skip the PSNR calibration: plan --budget only (flag; default: off)")
    pr.add_argument("--recalibrate", metavar="PROFILE", help="measure nothing new: re-fit the calibration of this profile "
                    "(--verify N plans), re-time its compute and exchange (--retime) on this machine and/or correct its "
                    "quality tables on the optimizer's plans (--correct ROUNDS), write --out (default: none: profile anew)")
    pr.add_argument("--retime", action="store_true",
                    help="with --recalibrate: re-measure compute and exchange costs (flag; default: off)")
    pr.add_argument("--batch-curve", action="store_true", dest="batch_curve",
                    help="with --recalibrate: measure only BatchStep's batch curve (one call on k offsets, k = 1..max_window) "
                    "and keep every other number (flag; default: off; --retime measures it too)")
    pr.add_argument("--correct", type=_positive_int, default=None, metavar="ROUNDS",
                    help="plan-level corrections: plan, run the plans on the calibration samples, raise the quality "
                    "tables where an image measured below its prediction; at most ROUNDS rounds (needs a calibration) "
                    "(default: none: no corrections)")
    pr.add_argument("--threads", type=_positive_int, default=1,
                    help="intra-op threads on CPU, as exec's ranks use (default: %(default)s)")
    pr.add_argument("--propagation-stride", type=_positive_int, default=1, dest="propagation_stride",
                    help="measure propagation every k-th step and interpolate, costing ~T^2/(2k) forwards (default: %(default)s)")
    return p


def _debug_requested(argv: list[str] | None, args) -> bool:
    if os.environ.get("PARASTEP_DEBUG", "") not in ("", "0"):
        return True
    if args is not None:
        return bool(getattr(args, "debug", False))
    return "--debug" in (sys.argv[1:] if argv is None else argv)   # the parser itself failed


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: the command's own (0 ok), a ``UserError``'s (2 bad input, 1 an
    invalid schedule), 1 for anything unexpected, 130 on Ctrl-C. Errors are one line on stderr."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        module = importlib.import_module(COMMANDS[args.command])
        code = module.run(args)
    except UserError as exc:
        if _debug_requested(argv, args):
            traceback.print_exc(file=sys.stderr)
        print(f"parastep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("parastep: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a raw traceback
        debug = _debug_requested(argv, args)
        if debug:
            traceback.print_exc(file=sys.stderr)
        what = one_line(f"{type(exc).__name__}: {exc}", limit=300)
        hint = "" if debug else "; rerun with 'parastep --debug ...' for the traceback"
        print(f"parastep: error: unexpected {what} (a bug or an unhandled case; please report it){hint}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
