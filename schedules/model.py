"""The schedule contract: pydantic models of the YAML in docs/design.md §3.

Pure data: no torch, no ortools. Field-level checks live here (types, signs,
unknown keys); cross-window invariants of docs/design.md §1 live in ``check.py`` so
that ``validate`` can name which invariant broke.

Parsing is strict (docs/design.md §7: reject, never fix silently): no type coercion (``"3"``, ``1.0``
or ``true`` is not an integer; ``1`` is accepted where a float is expected), no unknown keys, finite
floats only, and every integer bounded (``MAX_WORLD_SIZE``, ``MAX_STEPS``) before anything is
sized by it. The JSON Schema's ``required`` lists are exactly what validation requires: the
discriminator ``kind`` of a window and ``parastep_schedule`` have defaults for Python callers but
must be in a file (``io.schedule_from_dict``), so the schema lists them as required.

Window sizes: a window's size is implied by the next window's start (or by
``num_steps`` for the last window). A parallel window states its size through
``len(placement)``; a reuse window through ``size``; both must agree with the
implied size (checked in ``check.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, WrapValidator, field_validator
from pydantic_core import PydanticCustomError

from ..profiles.model import Predictor

SCHEMA_VERSION = 1
MAX_STEPS = 100_000          # denoising steps: far above any sampler in use (1000 is the usual top)
MAX_WORLD_SIZE = 65_536      # ranks: bounds what is sized by it ([0] * world_size)
MAX_WINDOW = MAX_STEPS

# an image side; Strict() survives the tuple's strict=False (YAML has lists, not tuples)
Pixels = Annotated[int, Strict(), Field(ge=1, le=1 << 20)]
Policy = Literal["optimal", "fixed", "fixed-batch"]
Rank = Annotated[int, Field(ge=0, le=MAX_WORLD_SIZE)]
# a CFG split: [rank_uncond, rank_cond]. The two ranks each compute one half of the guided batch and
# swap the raw halves, so the pipeline's own guidance combine runs unchanged (docs/design.md §1, "CFG split")
RankPair = Annotated[list[Rank], Field(min_length=2, max_length=2)]


def _one_entry_error(value, handler):
    """A bad entry fails both branches of the union; report it once, saying what an entry may be."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("placement_entry", "not a valid placement entry: an entry is a rank (an integer "
                                  "from 0 to world_size - 1) or a pair of ranks [rank_uncond, rank_cond] (a CFG "
                                  "split); write e.g. 0 or [0, 1]") from None


PlacementEntry = Annotated[Union[Rank, RankPair], WrapValidator(_one_entry_error)]


def entry_ranks(entry: "int | list[int] | tuple[int, ...]") -> tuple[int, ...]:
    """The ranks that compute one offset: ``(r,)`` for a whole offset, ``(u, c)`` for a CFG split
    (unconditional half on ``u``, conditional half on ``c``)."""
    return (entry,) if isinstance(entry, int) else tuple(entry)


def held_by_all(placement, world_size: int) -> bool:
    """Does every rank already hold every offset's output after computing a parallel window with
    this placement (all offsets split over the only two ranks)? Then no end exchange is needed."""
    everyone = set(range(world_size))
    return all(set(entry_ranks(e)) >= everyone for e in placement)
SolverStatus = Literal["OPTIMAL", "FEASIBLE", "INFEASIBLE", "MODEL_INVALID", "UNKNOWN", "NOT_SOLVED"]


def _require(*names: str):
    """JSON Schema hook: list ``names`` as required (fields whose Python default a file may not omit)."""

    def hook(schema: dict) -> None:
        schema["required"] = sorted(set(schema.get("required", [])) | set(names), key=list(schema["properties"]).index)

    return hook


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ExactWindow(_Strict):
    """One step, computed redundantly by every rank. No communication, unless ``split`` pairs
    ranks: each pair ``[u, c]`` computes the unconditional half on ``u`` and the conditional half on
    ``c`` and swaps the raw halves (lossless); ranks in no pair compute both halves
    themselves (so every rank ends with bit-identical outputs)."""

    model_config = ConfigDict(json_schema_extra=_require("kind"))

    start: int = Field(ge=0, le=MAX_STEPS)
    kind: Literal["exact"] = "exact"
    split: Optional[list[RankPair]] = Field(default=None, min_length=1, max_length=MAX_WORLD_SIZE,
                                            description="disjoint [rank_uncond, rank_cond] pairs that split this step's CFG batch")

    @property
    def has_split(self) -> bool:
        return bool(self.split)

    def rank_groups(self, world_size: int) -> list[tuple[int, ...]]:
        """Who computes this step: each pair, then every rank in no pair alone."""
        pairs = [tuple(p) for p in self.split or ()]
        paired = {r for p in pairs for r in p}
        return pairs + [(r,) for r in range(world_size) if r not in paired]


class ParallelWindow(_Strict):
    """Reuse-then-predict over ``len(placement)`` steps; offset j is computed on rank ``placement[j]``,
    or split over the pair ``placement[j] = [rank_uncond, rank_cond]`` (CFG split: each computes one
    half of the guided batch and they swap the raw halves).

    ``batch: true`` (BatchStep): each rank computes the offsets placed on it in *one* denoiser call,
    their inputs concatenated along the batch with per-row timesteps (the reuse chain does not depend
    on the outputs, so every input is known at the rank's first offset). Same outputs as the
    unbatched window up to the kernels' batch-size effects in the last bits. A placement may name a
    rank for several offsets with or without ``batch``, and a window may hold more offsets than there
    are ranks (``world_size: 1`` included). A batched window has no CFG-split entries
    (``check.violations``: ``batch-split``).

    docs/design.md §1 requires w >= 2; a one-entry placement parses but ``check.violations`` rejects it
    (``parallel-too-small``), so that ``validate`` names the invariant."""

    model_config = ConfigDict(json_schema_extra=_require("kind"))

    start: int = Field(ge=0, le=MAX_STEPS)
    kind: Literal["parallel"] = "parallel"
    placement: list[PlacementEntry] = Field(min_length=1, max_length=MAX_WINDOW)
    predictor: Predictor = "last"
    batch: bool = Field(default=False, description="each rank computes its offsets in one batched denoiser call (BatchStep)")

    @property
    def size(self) -> int:
        return len(self.placement)

    def offset_ranks(self, offset: int) -> tuple[int, ...]:
        """The rank(s) computing ``offset`` (two for a CFG split)."""
        return entry_ranks(self.placement[offset])

    @property
    def has_split(self) -> bool:
        return any(not isinstance(e, int) for e in self.placement)


class ReuseWindow(_Strict):
    """``size`` steps with no forward at all: each applies the predictor's stand-in output."""

    model_config = ConfigDict(json_schema_extra=_require("kind"))

    start: int = Field(ge=0, le=MAX_STEPS)
    kind: Literal["reuse"] = "reuse"
    size: int = Field(ge=1, le=MAX_WINDOW)
    predictor: Predictor = "last"

    @property
    def has_split(self) -> bool:
        return False


Window = Annotated[Union[ExactWindow, ParallelWindow, ReuseWindow], Field(discriminator="kind")]


class ProfileRef(_Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    prior_parts: list[str] = Field(default_factory=list, description="profile parts that are priors, not measurements, and price this plan "
                                   "(Profile.prior_parts_for its world size and CFG split)")
    interconnect: Optional[str] = Field(default=None, description="the interconnect preset (plan --interconnect) that "
                                                                  "priced exchanges instead of the profile's own costs")


class SampleQuality(_Strict):
    """The per-image quality statement the solver enforced, over the profile's calibration samples."""

    samples: int = Field(ge=1, description="calibration samples N")
    required: int = Field(ge=1, description="samples that must be within their bound")
    within: int = Field(ge=0, description="samples this plan keeps within their bound")
    budget_units: list[int] = Field(description="per sample: integer bound")
    predicted_units: list[int] = Field(description="per sample: integer predicted error of this plan")


class MeasuredQuality(_Strict):
    """Per-image PSNR of this schedule's output vs the sequential output of the same seed, measured
    on samples the profile never saw (``plan --verify``)."""

    samples: int = Field(ge=1)
    prompts: list[str]
    seeds: list[int]
    psnr_db_mean: float
    psnr_db_p10: float
    psnr_db_min: float
    rounds: int = Field(ge=1, description="plans measured (plan --verify re-plans when a plan misses its target, or meets it with room to spare)")
    target_met: Optional[bool] = None


def plan_identity(world_size: int, windows) -> str:
    """A short stable identity of a plan (its world size and windows as plain data): what a
    profile's calibration keys the plans it measured by (``Calibration.measured_plans``)."""
    import hashlib
    import json

    text = json.dumps([world_size, [w.model_dump(mode="json") for w in windows]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PsnrPrediction(_Strict):
    """The plan's predicted per-image PSNR distribution (the profile's calibration: each calibration
    image's central prediction plus each held-out residual, or this plan's own residuals where the
    calibration ran it), and the split-conformal per-image lower bound of its worst calibration image."""

    median_db: float
    p10_db: float
    worst_lower_db: Optional[float] = Field(default=None, description="the worst calibration image's lower bound at `level` "
                                                                      "(null: too few residuals for that level)")
    level: Optional[float] = Field(default=None, gt=0, lt=1)
    residuals: int = Field(ge=1, description="residuals the distribution is made of")
    residuals_of: Literal["picks", "this plan"] = Field(default="picks", description=(
        "picks: the calibration's held-out residuals at this world size; this plan: the plan's own, measured when the "
        "profile was calibrated (measured minus central, per calibration image)"))
    calibrated_on: int = Field(default=0, ge=0, description=(
        "fresh-image scores the median and 10th percentile are read at (the calibration's share_scores; 0: read at 0.5 "
        "and 0.1 of the mixture)"))
    measured_on: int = Field(default=0, ge=0, description=(
        "calibration images this very plan was run on when the profile was calibrated (0: none)"))
    measured_median_db: Optional[float] = Field(default=None, description="this plan's median PSNR over those images")
    measured_p10_db: Optional[float] = Field(default=None, description="this plan's 10th-percentile PSNR over those images")


class Quality(_Strict):
    metric: Literal["deviation"] = "deviation"
    budget: float = Field(ge=0, description="per-sample bound on the predicted output deviation (latent RMS units); "
                                            "the default plan's bound is the fixed plan's own error per sample, recorded here as their mean")
    predicted: float = Field(ge=0, description="predicted output deviation of this schedule, mean over samples (latent RMS units)")
    error_units_per_unit: float = Field(gt=0, description="integer scale the solver used: round(deviation * this)")
    budget_units: int = Field(ge=0, description="sum over samples of the integer bounds")
    predicted_units: int = Field(ge=0, description="sum over samples of the integer predicted errors")
    coverage: Optional[float] = Field(default=None, ge=0, le=1, description="the user's --coverage: share of images at or above the target")
    per_sample: Optional[SampleQuality] = None
    min_psnr_db: Optional[float] = Field(default=None, description="the user's --min-psnr target, if any")
    predicted_psnr_db: Optional[float] = Field(default=None, description="from the profile's calibration: the image at the "
                                                                         "coverage quantile (the worst image required to be within)")
    predicted_psnr: Optional[PsnrPrediction] = Field(default=None, description="predicted per-image PSNR distribution "
                                                                              "(null: lossless, or a calibration without residuals)")
    measured: Optional[MeasuredQuality] = None


class Latency(_Strict):
    predicted_s: float = Field(ge=0)
    sequential_s: float = Field(ge=0)
    speedup: float = Field(ge=0)


class Solver(_Strict):
    name: Literal["branch-and-bound", "cp-sat", "dp", "fixed", "measured"] = Field(description=(
        "who chose the plan: a solver, the fixed hand plan, or measured (a plan the profile's calibration ran and "
        "measured to meet the --min-psnr target, faster than the model's optimum)"))
    status: SolverStatus
    objective: Optional[int] = Field(default=None, description="integer latency units (see latency_units_per_s)")
    bound: Optional[int] = None
    wall_s: float = Field(ge=0)
    latency_units_per_s: float = Field(gt=0)
    time_limit_s: Optional[float] = None
    workers: Optional[int] = None
    seed: Optional[int] = None


class Totals(_Strict):
    """What the windows imply; ``check.py`` recomputes and compares."""

    forwards_per_rank: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_WORLD_SIZE)
    bytes_exchanged: int = Field(ge=0, description="sum over windows and ranks of bytes each rank receives")


class Schedule(_Strict):
    model_config = ConfigDict(json_schema_extra=_require("parastep_schedule"))

    parastep_schedule: Literal[1] = SCHEMA_VERSION
    model: str = Field(min_length=1, description="model registry name (or a folder given with --model-path)")
    pipeline_class: Optional[str] = Field(default=None, min_length=1, max_length=200,
                                          description="the profiled pipeline class (model_index.json's _class_name)")
    model_identity: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                          description="sha256 of the profiled folder's model_index.json and component configs "
                                                      "(not weights); exec and evaluate refuse a folder with another identity")
    # strict=False on the container only: YAML has lists, not tuples; the items stay strict ints
    resolution_px: Optional[tuple[Pixels, Pixels]] = Field(default=None, strict=False, description="(height, width) in pixels")
    num_frames: Optional[int] = Field(default=None, ge=1, le=MAX_STEPS,
                                      description="frames per video the profile measured (video pipelines); exec refuses another --num-frames")
    strength: Optional[float] = Field(default=None, gt=0, le=1,
                                      description="img2img strength the profile measured: num_steps are the steps it runs; "
                                                  "exec refuses another --strength")
    scheduler: str = Field(min_length=1, description="diffusers scheduler class name the profile was made with")
    guidance_scale: Optional[float] = None
    num_steps: int = Field(ge=1, le=MAX_STEPS)
    world_size: int = Field(ge=1, le=MAX_WORLD_SIZE)
    max_window: int = Field(ge=1, le=MAX_WINDOW)
    output_bytes: int = Field(ge=1, le=1 << 53, description="bytes of one guided output (what an exchange moves per offset)")
    raw_half_bytes: Optional[int] = Field(default=None, ge=1, le=1 << 53,
                                          description="bytes of one CFG half of the denoiser's raw output (what a split pair "
                                                      "swaps); absent: output_bytes (the profile's raw_half_bytes)")
    policy: Policy = "optimal"
    profile: Optional[ProfileRef] = None
    quality: Optional[Quality] = None
    latency: Optional[Latency] = None
    solver: Optional[Solver] = None
    totals: Totals
    windows: list[Window] = Field(min_length=1, max_length=MAX_STEPS)

    @field_validator("parastep_schedule", mode="before")
    @classmethod
    def _version_is_an_int(cls, value):
        if isinstance(value, bool):  # Literal[1] alone accepts True (True == 1)
            raise ValueError("must be the integer 1, not a boolean")
        return value

    @property
    def uses_split(self) -> bool:
        """Does any window split a step's CFG halves over two ranks (an exact ``split`` or a pair placement)?"""
        return any(w.has_split for w in self.windows)

    @property
    def uses_batch(self) -> bool:
        """Does any parallel window compute a rank's offsets in one batched call?"""
        return any(isinstance(w, ParallelWindow) and w.batch for w in self.windows)

    @property
    def swap_bytes(self) -> int:
        """Bytes of one raw CFG half (what each rank of a split pair sends its partner)."""
        return self.raw_half_bytes if self.raw_half_bytes is not None else self.output_bytes

    def window_bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of every window, stop implied by the next start (may be inconsistent: see check)."""
        starts = [w.start for w in self.windows]
        return list(zip(starts, starts[1:] + [self.num_steps]))
