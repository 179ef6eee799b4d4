"""The profile contract (docs/design.md §2): what the planner knows about one model on one machine.

Pure data plus the cost primitives every consumer must share (no torch, no ortools):

- ``forward_time_s(k)``   time for one rank to compute k offsets of a window
- ``exchange_time_s(g, n)`` time for g ranks to exchange n guided outputs
- ``window_deviation(...)`` predicted output deviation a window adds

Table axes (all 0-based):
- ``deviation[predictor].mean[s][j]``: offset j of a *parallel* window starting at step s.
  Row s has ``min(max_window, num_steps - s)`` entries; it is empty where the predictor is
  undefined (s = 0 for both, s = 1 for ``linear``). Entry j = 0 is 0 (offset 0 sees x_s).
- ``reuse_deviation[predictor].mean[s][j]``: the j-th step of a *reuse* window starting at s
  (same row lengths; entry 0 is not 0).
- ``propagation.gain[i]``: output deviation per unit of local deviation injected at step i.
  A window's predicted error is ``sum_j gain[s + j] * table[s][j]``.
- ``compute.forward_s[k-1]``: wall time of one rank computing k offsets (k = 1..len), one call each.
- ``compute.batched_forward_s[k-1]`` (optional, BatchStep): one call on k offsets' inputs batched.
- ``output_errors`` (measured profiles): the quality model the planner uses when present. For
  each calibration sample n, ``output_errors.parallel[predictor][s][w-1][n]`` is the output RMS
  (latent units, vs the sequential output) of a parallel window (s, w) run alone, every other step
  exact; ``reuse`` likewise. A plan's predicted error for sample n is the sum over its windows
  (windows were measured to add up sub-additively: the sum is an upper-leaning estimate).
  Without it (priors) the single "sample" is the mean table priced by ``propagation.gain``.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Annotated, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROFILE_SCHEMA_VERSION = 1

# the stand-in a parallel or reuse window uses for the denoiser outputs it has not got
# (docs/design.md §1): the last applied output, or a linear extrapolation of the last two. The
# profile holds a table per predictor and a schedule's window names one; ``PREDICTORS`` lists them.
Predictor = Literal["last", "linear"]
PREDICTORS: tuple[Predictor, ...] = get_args(Predictor)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measured(_Strict):
    source: Literal["measured"] = "measured"
    device: str = Field(description="e.g. 'cpu: 2 cores, 1 thread per rank' or 'NVIDIA H100 80GB HBM3'")
    date: str = Field(description="ISO date of the measurement")
    prompts: list[str] = Field(default_factory=list, description="prompts or class labels used")
    seeds: list[int] = Field(default_factory=list)
    packages: dict[str, str] = Field(default_factory=dict, description="package -> version")
    notes: str = ""


class Prior(_Strict):
    source: Literal["prior"] = "prior"
    rule: str = Field(description="the rule that produced the numbers, precise enough to recompute them")
    reference: str = Field(default="", description="where the rule or its constants come from")
    params: dict[str, float] = Field(default_factory=dict, description="constants of the rule (lets --steps T re-derive tables)")


Provenance = Annotated[Union[Measured, Prior], Field(discriminator="source")]


class DeviationStats(_Strict):
    mean: list[list[float]]
    max: list[list[float]]


class Propagation(_Strict):
    gain: list[float] = Field(description="per step i: output deviation per unit local deviation at i")


class Similarity(_Strict):
    """Adjacent-step similarity of guided outputs e_i vs e_{i+1} (length num_steps - 1)."""

    cosine: list[float]
    rel_l1: list[float]


class Compute(_Strict):
    forward_s: list[Annotated[float, Field(ge=0)]] = Field(min_length=1, description="index k-1: one rank computing k offsets")
    step_s: float = Field(ge=0, description="one scheduler.step (reuse, replay or real)")
    step_overhead_s: float = Field(default=0.0, ge=0, description="fixed per-step cost outside forward and step (pipeline bookkeeping)")
    half_forward_s: Optional[float] = Field(default=None, ge=0, description="one forward of one CFG half (batch B instead of 2B); "
                                                                            "absent: the model has no two-way guided batch, or it was not measured")
    batched_forward_s: Optional[list[Annotated[float, Field(ge=0)]]] = Field(
        default=None, min_length=1, description="BatchStep: index k-1: one denoiser call on k offsets' inputs concatenated "
                                                "along the batch (k times the pipeline's batch); absent: not measured, and the "
                                                "planner never batches")


CommSource = Literal["measured", "preset"]


class CommEntry(_Strict):
    ranks: int = Field(ge=2)
    latency_s: float = Field(ge=0)
    bandwidth_bytes_per_s: float = Field(gt=0)
    source: Optional[CommSource] = Field(default=None, description=(
        "where these constants come from: 'measured' (timed on the profiling machine with the executor's own exchange "
        "code), 'preset' (the interconnect preset Comm.preset); absent: as provenance.comm says for the whole part"))


class Comm(_Strict):
    """Alpha-beta model per rank count: exchanging n outputs among g ranks takes
    ``latency_s + n * output_bytes / bandwidth_bytes_per_s``. ``preset`` names an interconnect
    preset the entries came from (then any g is allowed: the preset's constants are reused).
    Each entry's ``source`` says whether it was measured or taken from that preset, so a profile
    measured on 2 ranks and extended to 8 by a preset prices a 2-rank plan by a measurement
    (``Profile.prior_parts_for``)."""

    preset: Optional[str] = None
    entries: list[CommEntry] = Field(default_factory=list)
    pair: Optional[CommEntry] = Field(default=None, description="CFG split: two ranks swapping one raw half each "
                                                                "(latency_s + Profile.swap_bytes / bandwidth_bytes_per_s)")

    @model_validator(mode="after")
    def _preset_named(self) -> "Comm":
        """An entry from a preset names which one: ``preset`` is set."""
        if self.preset is None:
            for what, e in [(f"entry for ranks={e.ranks}", e) for e in self.entries] + [("pair", self.pair)]:
                if e is not None and e.source == "preset":
                    raise ValueError(f"comm {what} has source 'preset' but comm names no preset; set comm.preset to the "
                                     "interconnect preset it came from, or re-profile")
        return self


DEFAULT_CALIBRATION_PLANS = 24     # verification plans of a new profile's calibration (more while too few images are lossy)


def recalibrate_command(world_size: int) -> str:
    """The command that calibrates a profile at ``world_size`` as well (a recalibration keeps every
    world size it had): what the planner names where a profile cannot state a --min-psnr."""
    return (f"parastep profile --recalibrate PROFILE --calibration-samples {DEFAULT_CALIBRATION_PLANS} "
            f"--gpus {world_size} --out NEW.yaml")


class CalibrationSample(_Strict):
    prompt: str
    seed: int


class Corrections(_Strict):
    """Plan-level corrections of the tables (``profiler/correct.py``): plans the optimizer picked were
    run on the calibration samples; where an image measured below its calibrated prediction, the
    plan's windows were run alone (entries raised to what they measured) and what they left
    unexplained was spread over the plan's windows, until the plan's prediction met the measurement."""

    rounds: int = Field(ge=0)
    plans_measured: int = Field(ge=0, description="plan runs on the calibration samples, all rounds")
    windows_run_alone: int = Field(default=0, ge=0, description="windows of plans that missed, each run alone once (its entries raised to what it measured)")
    entries_raised: int = Field(ge=0, description="(window, sample) entries multiplied by a factor > 1, counted per round")
    below_prediction_per_round: list[int] = Field(default_factory=list, description="(plan, image) pairs measured below their prediction, per round")
    converged: bool = Field(description="the last round's plans all met their predictions on every image")
    world_sizes: list[int] = Field(default_factory=list)
    min_psnr_dbs: list[float] = Field(default_factory=list, description="the --min-psnr statements planned each round (with the fixed and default plans)")
    cfg_split: list[Literal["auto", "off"]] = Field(default_factory=lambda: ["auto"],
                                                    description="the --cfg-split settings planned each round")

    def followed_by(self, later: "Corrections") -> "Corrections":
        """The record of this run and a ``later`` one on its tables (``profile --recalibrate P
        --correct R`` continues from P's, valid since entries only go up): counts add up, the
        rounds' misses append, the settings planned are the union, converged is the later run's."""
        return later.model_copy(update=dict(
            rounds=self.rounds + later.rounds, plans_measured=self.plans_measured + later.plans_measured,
            windows_run_alone=self.windows_run_alone + later.windows_run_alone,
            entries_raised=self.entries_raised + later.entries_raised,
            below_prediction_per_round=self.below_prediction_per_round + later.below_prediction_per_round,
            world_sizes=sorted(set(self.world_sizes) | set(later.world_sizes)),
            min_psnr_dbs=sorted(set(self.min_psnr_dbs) | set(later.min_psnr_dbs)),
            cfg_split=sorted(set(self.cfg_split) | set(later.cfg_split))))


class OutputErrors(_Strict):
    """Per-sample output error of every candidate window (see the module docstring for axes).
    Row s of a table has ``min(max_window, num_steps - s)`` entries (empty where the predictor is
    undefined), each a list with one value per entry of ``samples``."""

    samples: list[CalibrationSample] = Field(min_length=1)
    parallel: dict[Predictor, list[list[list[Annotated[float, Field(ge=0)]]]]]
    reuse: dict[Predictor, list[list[list[Annotated[float, Field(ge=0)]]]]]
    rank: int = Field(ge=1, description="directions per boundary pushed through the rest of the run")
    captured_energy: float = Field(ge=0, le=1, description="share of the windows' squared deviation (all windows and samples) inside those directions; the rest is priced by propagation.gain")
    corrections: Optional[Corrections] = Field(default=None, description="plan-level corrections applied to these tables, if any")


PSNR_CAP_DB = 100.0     # PSNR reported for an image identical to the sequential one (executor.metrics uses the same cap)


def conformal_lower_offset(residuals: "Sequence[float]", level: float) -> Optional[float]:
    """Split conformal: the offset q such that a new residual r (exchangeable with ``residuals``)
    has P(r >= q) >= ``level``: the k-th smallest residual, k = floor((m + 1)(1 - level)) (the
    finite-sample correction). None when k < 1: m residuals cannot support ``level`` (it needs
    m >= 1 / (1 - level) - 1)."""
    if not 0 < level < 1:
        raise ValueError(f"a conformal level is in (0, 1), got {level}")
    m = len(residuals)
    k = math.floor((m + 1) * (1 - level) + 1e-12)
    if k < 1:
        return None
    return sorted(residuals)[k - 1]


def _conformal_upper(scores: "Sequence[float]", coverage: float) -> Optional[float]:
    """The ceil((m + 1) Q)-th smallest of m sorted scores (a new exchangeable score is at most it
    with probability >= Q); None where m scores cannot support Q."""
    m = len(scores)
    k = math.ceil((m + 1) * coverage - 1e-12)
    if m == 0 or k > m:
        return None
    return scores[max(k, 1) - 1]


def _quantile(values: "Sequence[float]", q: float) -> float:
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class MeasuredPlan(_Strict):
    """A plan the calibration ran: its world size and its windows as plain data (schedule window
    dicts; ``schedules.model`` validates them, this contract must not import it)."""

    world_size: int = Field(ge=1)
    windows: list[dict] = Field(min_length=1)


class Calibration(_Strict):
    """Predicted output deviation E of one image -> PSNR of that image vs the sequential run.

    ``central_intercept_db - slope_db_per_decade * log10(E)`` is the central (least squares) line;
    ``residuals_db`` are measured minus central PSNR of the images of verification plans the line
    was *not* fitted on (split conformal). ``intercept_db`` is the central intercept plus the
    conformal offset at ``level``: ``psnr_db(E)`` is a per-image lower bound that a new (plan,
    image) pair like the verification ones meets with probability >= ``level``. A calibration
    without residuals (older profiles) has only the shifted line."""

    metric: Literal["psnr_db"] = "psnr_db"
    intercept_db: float
    slope_db_per_decade: float = Field(gt=0)
    fitted_on: int = Field(ge=0, description="number of verification runs")
    spearman: Optional[float] = None
    median_abs_error_db: Optional[float] = None
    central_intercept_db: Optional[float] = Field(default=None, description="the least-squares line's intercept")
    level: Optional[float] = Field(default=None, gt=0, lt=1, description="conformal level of intercept_db's per-image bound")
    residuals_db: list[float] = Field(default_factory=list, description="held-out residuals vs the central line, sorted")
    how: str = ""
    measured_plans: dict[str, list[float]] = Field(default_factory=dict, description=(
        "PSNR per calibration image (sample order) of every plan the calibration ran, by plan identity "
        "(schedules.model.plan_identity)"))
    measured_windows: dict[str, "MeasuredPlan"] = Field(default_factory=dict, description=(
        "the plan behind each measured_plans entry (same identity), so the planner can emit a plan the calibration "
        "measured to meet a --min-psnr target (planner.plan.measured_alternative)"))
    share_scores: list[float] = Field(default_factory=list, description=(
        "sorted, one per (pick, fresh image): the pick's predicted share of images at or above what that image measured "
        "(an image none of the calibration's, run with the pick): split-conformal scores of the predicted share "
        "(required_share)"))
    own_share_scores: list[float] = Field(default_factory=list, description=(
        "as share_scores, with each pick's predicted share from its own residuals (measured on the calibration images): "
        "the scores for plans the calibration ran"))
    by_world_size: dict[int, "Calibration"] = Field(default_factory=dict, description=(
        "per world size G: the calibration fitted on the plans the optimizer picked at G (Mondrian split conformal); "
        "a world size not listed uses this pooled one"))

    def at(self, world_size: "Optional[int]") -> "Calibration":
        """The calibration that states plans on ``world_size`` ranks: its own where one was fitted, else this pooled one."""
        return self.by_world_size.get(world_size, self) if world_size is not None else self

    def calibrated_world_sizes(self) -> list[int]:
        return sorted(self.by_world_size)

    def psnr_db(self, deviation: float) -> float:
        return self.intercept_db - self.slope_db_per_decade * math.log10(max(deviation, 1e-30))

    def deviation_for_psnr(self, psnr_db: float) -> float:
        return 10.0 ** ((self.intercept_db - psnr_db) / self.slope_db_per_decade)

    @property
    def has_residuals(self) -> bool:
        return self.central_intercept_db is not None and len(self.residuals_db) > 0

    def central_psnr_db(self, deviation: float) -> float:
        """The central line's PSNR for ``deviation`` (the shifted line's where there are no residuals)."""
        a = self.central_intercept_db if self.central_intercept_db is not None else self.intercept_db
        return a - self.slope_db_per_decade * math.log10(max(deviation, 1e-30))

    def mixture_db(self, deviations: "Sequence[float]", measured: "Optional[Sequence[float]]") -> tuple:
        """(the mixture of central prediction + residual over images and residuals, the central
        predictions, the residuals used, their source): ``predicted_psnr`` states it."""
        # a lossless image is the sequential output: evaluate reports it at its cap, and so does the mixture
        centres = [self.central_psnr_db(d) if d > 0 else PSNR_CAP_DB for d in deviations]
        residuals, source = self.residuals_db, "picks"
        if measured and len(measured) == len(deviations) and self.level is not None:
            own = [m - c for m, c in zip(measured, centres) if c < PSNR_CAP_DB and m < PSNR_CAP_DB]
            if conformal_lower_offset(own, self.level) is not None:
                residuals, source = sorted(own), "this plan"
        mix = [min(c + r, PSNR_CAP_DB) if c < PSNR_CAP_DB else PSNR_CAP_DB for c in centres for r in residuals]
        return mix, centres, residuals, source

    def _scores(self, measured: "Optional[Sequence[float]]") -> tuple["Optional[Sequence[float]]", list[float]]:
        """(the measurement the mixture uses, the scores that calibrate it): a plan the calibration
        ran is stated by its own residuals and the own-residual scores, where there are such."""
        if measured and self.own_share_scores:
            return measured, self.own_share_scores
        return None, self.share_scores

    def share_statement(self, deviations: "Sequence[float]", psnr_db: float, coverage: float,
                        measured: "Optional[Sequence[float]]" = None) -> tuple[Optional[float], Optional[float]]:
        """(the plan's predicted share at or above ``psnr_db``, the share ``coverage`` of new images
        needs): both from own residuals and own-residual scores for a plan the calibration ran
        (``measured``), else from the world size's residuals and scores. (None, None) without
        scores, or with too few for ``coverage``."""
        used, scores = self._scores(measured)
        need = _conformal_upper(scores, coverage)
        if need is None:
            return None, None
        return self.predicted_share(deviations, psnr_db, measured=used), need

    def required_share(self, coverage: float) -> Optional[float]:
        """The predicted share (``predicted_share``) a plan needs for ``coverage`` of new images to
        reach the target: the ceil((m + 1) Q)-th smallest of the m ``share_scores`` (split conformal;
        a new (pick, image) pair's score is at most it with probability >= Q, and its image reaches
        the target whenever the plan's predicted share at the target is at least its score, since the
        share falls as the PSNR rises). None without scores, or with too few for ``coverage``."""
        return _conformal_upper(self.share_scores, coverage)

    def predicted_share(self, deviations: "Sequence[float]", psnr_db: float,
                        measured: "Optional[Sequence[float]]" = None) -> Optional[float]:
        """The share of a plan's images predicted at or above ``psnr_db``: of ``predicted_psnr``'s
        mixture (1 for a lossless plan); None without residuals."""
        shares = self.predicted_shares(deviations, [psnr_db], measured)
        return None if shares is None else shares[0]

    def predicted_shares(self, deviations: "Sequence[float]", psnr_dbs: "Sequence[float]",
                         measured: "Optional[Sequence[float]]" = None) -> Optional[list[float]]:
        """``predicted_share`` at each of ``psnr_dbs``, from one mixture."""
        if not self.has_residuals:
            return None
        if not any(d > 0 for d in deviations):
            return [1.0] * len(psnr_dbs)
        mix = sorted(self.mixture_db(deviations, measured)[0])
        return [(len(mix) - bisect.bisect_left(mix, y)) / len(mix) for y in psnr_dbs]

    def predicted_psnr(self, deviations: "Sequence[float]", measured: "Optional[Sequence[float]]" = None) -> Optional[dict]:
        """A plan's predicted per-image PSNR distribution from its per-image deviations: the mixture
        of central prediction + residual over images and residuals (what a random image of this plan
        measures), its median and 10th percentile, and the per-image conformal lower bound of the
        worst image at ``level`` (always the model's: the bound the planner planned to).

        The residuals are the held-out ones of the calibration, unless ``measured`` is given: this
        plan's own PSNR per calibration image, measured when the profile was calibrated. Then, with
        at least as many lossy images as a bound at ``level`` needs, the residuals are this plan's
        own (measured minus central, per image), so a plan that compounds worse or better than the
        model says is predicted as it measured, while the mixture over all images smooths the 10th
        percentile that a handful of images would give alone. With fresh-image scores (the picks
        run on images the calibration had not seen), the median and 10th percentile are read where
        those images put them (``calibrated_on``): own-residual scores for own residuals, the world
        size's for its residuals (``_scores``). None without residuals, or for a lossless plan."""
        if not self.has_residuals or not any(d > 0 for d in deviations):
            return None
        used, scores = self._scores(measured)
        # calibrated on fresh images: the mixture, read at the shares the picks' fresh images
        # measured (their scores' 90th and 50th percentiles), not at 0.1 and 0.5
        mix, centres, residuals, source = self.mixture_db(deviations, used if scores else measured)
        lo, mid = (1.0 - _quantile(scores, 0.9), 1.0 - _quantile(scores, 0.5)) if scores else (0.1, 0.5)
        q = conformal_lower_offset(self.residuals_db, self.level) if self.level is not None else None
        out = {"median_db": _quantile(mix, mid), "p10_db": _quantile(mix, lo), "calibrated_on": len(scores),
               "worst_lower_db": None if q is None else min(PSNR_CAP_DB, min(centres) + q),
               "level": self.level, "residuals": len(residuals), "residuals_of": source,
               "measured_on": len(measured or ())}
        if measured:
            out.update(measured_median_db=_quantile(measured, 0.5), measured_p10_db=_quantile(measured, 0.1))
        return out


class Provenances(_Strict):
    deviation: Provenance
    propagation: Provenance
    similarity: Provenance
    compute: Provenance
    comm: Provenance
    output_errors: Optional[Provenance] = None
    calibration: Optional[Provenance] = None


class Profile(_Strict):
    parastep_profile: Literal[1] = PROFILE_SCHEMA_VERSION
    name: str
    model: str = Field(description="model registry name this profile is for")
    pipeline_class: Optional[str] = Field(default=None, description="the pipeline class that was measured (model_index.json's _class_name)")
    model_identity: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                          description="sha256 of the measured folder's model_index.json and component configs, "
                                                      "not weights (executor.registry.folder_identity); exec refuses another folder")
    resolution_px: Optional[tuple[int, int]] = None
    num_frames: Optional[int] = Field(default=None, ge=1, description="frames per video measured (video pipelines)")
    strength: Optional[float] = Field(default=None, gt=0, le=1, description="img2img strength measured; num_steps are the "
                                                                            "steps a call with it runs")
    scheduler: str
    guidance_scale: Optional[float] = None
    num_steps: int = Field(ge=1)
    max_window: int = Field(ge=1, description="deviation tables hold offsets 0..max_window-1")
    output_bytes: int = Field(ge=1)
    raw_half_bytes: Optional[int] = Field(default=None, ge=1, description=(
        "bytes of one CFG half of the denoiser's raw output, what the ranks of a CFG split swap; absent: output_bytes "
        "(a model that also predicts a learned variance, like DiT or PixArt, returns twice the guided output's channels)"))
    provenance: Provenances
    deviation: dict[Predictor, DeviationStats]
    reuse_deviation: dict[Predictor, DeviationStats]
    propagation: Propagation
    similarity: Similarity
    compute: Compute
    comm: Comm
    output_errors: Optional[OutputErrors] = None
    calibration: Optional[Calibration] = None

    @model_validator(mode="after")
    def _shapes(self) -> "Profile":
        T, J = self.num_steps, self.max_window
        if self.output_errors is not None:
            n = len(self.output_errors.samples)
            for kind in ("parallel", "reuse"):
                tables = getattr(self.output_errors, kind)
                for pred in PREDICTORS:
                    rows = tables.get(pred)
                    if rows is None or len(rows) != T:
                        raise ValueError(f"output_errors.{kind}.{pred} must have num_steps={T} rows")
                    first_valid = 1 if pred == "last" else 2
                    for s, row in enumerate(rows):
                        want = 0 if s < first_valid else min(J, T - s)
                        if len(row) != want or any(len(v) != n for v in row):
                            raise ValueError(f"output_errors.{kind}.{pred}[{s}] must have {want} entries of {n} samples")
                        if any(not math.isfinite(x) for v in row for x in v):
                            raise ValueError(f"output_errors.{kind}.{pred}[{s}] has a non-finite entry")
        for table_name, tables in (("deviation", self.deviation), ("reuse_deviation", self.reuse_deviation)):
            for pred in PREDICTORS:
                if pred not in tables:
                    raise ValueError(f"{table_name} lacks predictor '{pred}'")
                for stat in ("mean", "max"):
                    rows = getattr(tables[pred], stat)
                    if len(rows) != T:
                        raise ValueError(f"{table_name}.{pred}.{stat} has {len(rows)} rows, expected num_steps={T}")
                    first_valid = 1 if pred == "last" else 2
                    for s, row in enumerate(rows):
                        want = 0 if s < first_valid else min(J, T - s)
                        if len(row) != want:
                            raise ValueError(f"{table_name}.{pred}.{stat}[{s}] has {len(row)} entries, expected {want}")
                        if any(v < 0 or not math.isfinite(v) for v in row):
                            raise ValueError(f"{table_name}.{pred}.{stat}[{s}] has a negative or non-finite entry")
        if len(self.propagation.gain) != T:
            raise ValueError(f"propagation.gain has {len(self.propagation.gain)} entries, expected num_steps={T}")
        return self

    @model_validator(mode="after")
    def _entries(self) -> "Profile":
        """Values the shape check does not see: signs, curve lengths, duplicate entries."""
        T = self.num_steps
        if any(not (math.isfinite(g) and g >= 0) for g in self.propagation.gain):
            bad = next(g for g in self.propagation.gain if not (math.isfinite(g) and g >= 0))
            raise ValueError(f"propagation.gain has the entry {bad}: a gain is a finite number >= 0; re-profile the model")
        for name in ("cosine", "rel_l1"):
            curve = getattr(self.similarity, name)
            if len(curve) != T - 1:
                raise ValueError(f"similarity.{name} has {len(curve)} entries, expected num_steps - 1 = {T - 1} "
                                 "(one per pair of adjacent steps); re-profile the model")
            if any(not math.isfinite(v) for v in curve):
                raise ValueError(f"similarity.{name} has a non-finite entry; re-profile the model")
        if any(abs(v) > 1 + 1e-6 for v in self.similarity.cosine):
            raise ValueError("similarity.cosine has an entry outside [-1, 1]; re-profile the model")
        if any(v < 0 for v in self.similarity.rel_l1):
            raise ValueError("similarity.rel_l1 has a negative entry; re-profile the model")
        ranks = [e.ranks for e in self.comm.entries]
        if len(set(ranks)) != len(ranks):
            dup = next(g for g in ranks if ranks.count(g) > 1)
            raise ValueError(f"comm.entries has {ranks.count(dup)} entries for ranks={dup}; keep one per rank count")
        if self.output_errors is not None:
            seen = set()
            for s in self.output_errors.samples:
                if (s.prompt, s.seed) in seen:
                    raise ValueError(f"output_errors.samples lists prompt {s.prompt!r} with seed {s.seed} twice; "
                                     "each calibration sample once")
                seen.add((s.prompt, s.seed))
        return self

    # ---- cost primitives shared by planner, simulate and benchmarks -------------------------

    def prior_parts(self) -> list[str]:
        parts = []
        for name in Provenances.model_fields:
            p = getattr(self.provenance, name)
            if p is not None and p.source == "prior":
                parts.append(name)
        return parts

    def comm_entry_is_prior(self, entry: CommEntry) -> bool:
        """Was this exchange entry taken from a preset (or, without a ``source``, is the whole comm part a prior)?"""
        if entry.source is not None:
            return entry.source == "preset"
        return self.provenance.comm.source == "prior"

    def prior_parts_for(self, world_size: int, *, uses_split: bool = False) -> list[str]:
        """The prior (not measured) parts that price a plan on ``world_size`` ranks, in provenance
        order, each named as a warning states it.

        Every prior part of ``prior_parts`` counts except comm, which counts per entry: the exchange
        entry for ``world_size`` ranks (no exchange on one rank) and, for a plan that splits CFG halves
        (``uses_split``), the pair swap. An entry counts where ``comm_entry_is_prior``; a world size
        beyond the table, priced by reusing the largest entry (``comm_entry``), is an extrapolation and
        counts too. ValueError where no entry prices ``world_size`` ranks (as ``comm_entry``)."""
        preset = f"interconnect preset '{self.comm.preset}'" if self.comm.preset else ""

        def named(entry: CommEntry, what: str) -> str:
            return f"{what} ({preset})" if entry.source == "preset" and preset else what

        comm = []
        if world_size >= 2:
            entry = self.comm_entry(world_size)
            if entry.ranks != world_size:
                comm.append(f"comm for {world_size} ranks (extrapolated from the {entry.ranks}-rank entry"
                            + (f", {preset})" if preset else ")"))
            elif self.comm_entry_is_prior(entry):
                comm.append(named(entry, f"comm for {world_size} ranks"))
        pair = self.comm.pair
        if uses_split and pair is not None and self.comm_entry_is_prior(pair):
            comm.append(named(pair, "CFG pair swap"))
        prior = self.prior_parts()
        parts: list[str] = []
        for name in Provenances.model_fields:
            if name == "comm":
                parts.extend(comm)
            elif name in prior:
                parts.append(name)
        return parts

    def forward_time_s(self, offsets: int) -> float:
        """One rank computing ``offsets`` offsets; beyond the table, linear in the last entry."""
        if offsets <= 0:
            return 0.0
        table = self.compute.forward_s
        if offsets <= len(table):
            return table[offsets - 1]
        return table[-1] * offsets / len(table)

    @property
    def can_batch(self) -> bool:
        """Does the profile price BatchStep (a measured or preset batch curve)?"""
        return self.compute.batched_forward_s is not None

    def batched_forward_time_s(self, offsets: int) -> float:
        """One rank computing ``offsets`` offsets in one batched call; beyond the curve, linear in its
        last entry (per-offset cost of the largest measured batch). Without a curve: ``forward_time_s``."""
        table = self.compute.batched_forward_s
        if table is None:
            return self.forward_time_s(offsets)
        if offsets <= 0:
            return 0.0
        if offsets <= len(table):
            return table[offsets - 1]
        return table[-1] * offsets / len(table)

    def rank_compute_time_s(self, offsets: int, *, batch: bool) -> float:
        """A rank's compute for ``offsets`` offsets of one window: one batched call, or one call each
        (one offset is one plain call either way)."""
        return self.batched_forward_time_s(offsets) if batch and offsets > 1 else self.forward_time_s(offsets)

    def exchange_time_s(self, ranks: int, outputs: int) -> float:
        """Exchange of ``outputs`` guided outputs among ``ranks`` ranks (0 for one rank or none)."""
        if ranks <= 1 or outputs <= 0:
            return 0.0
        entry = self.comm_entry(ranks)
        return entry.latency_s + outputs * self.output_bytes / entry.bandwidth_bytes_per_s

    @property
    def can_split(self) -> bool:
        """Costs for CFG splits are known (a half forward and the pair swap)."""
        return self.compute.half_forward_s is not None and self.comm.pair is not None

    def half_forward_time_s(self, halves: int) -> float:
        """One rank computing ``halves`` CFG halves, one after another (as the executor runs them)."""
        if self.compute.half_forward_s is None:
            raise ValueError(f"profile '{self.name}' has no half-forward time: it cannot price a CFG split")
        return max(0, halves) * self.compute.half_forward_s

    @property
    def swap_bytes(self) -> int:
        """Bytes of one raw CFG half (what each rank of a split pair sends its partner)."""
        return self.raw_half_bytes if self.raw_half_bytes is not None else self.output_bytes

    def pair_exchange_time_s(self) -> float:
        """Two ranks of a CFG split swapping their raw halves (``swap_bytes`` each way)."""
        if self.comm.pair is None:
            raise ValueError(f"profile '{self.name}' has no pair exchange cost: it cannot price a CFG split")
        return self.comm.pair.latency_s + self.swap_bytes / self.comm.pair.bandwidth_bytes_per_s

    def comm_entry(self, ranks: int) -> CommEntry:
        for e in self.comm.entries:
            if e.ranks == ranks:
                return e
        if self.comm.preset is not None and self.comm.entries:
            # a preset's alpha-beta constants do not depend on g: reuse the largest entry's
            return max(self.comm.entries, key=lambda e: e.ranks)
        have = sorted(e.ranks for e in self.comm.entries)
        raise ValueError(f"profile '{self.name}' has no exchange cost for {ranks} ranks (has {have})")

    def window_deviation(self, kind: Literal["parallel", "reuse"], *, start: int, size: int,
                         predictor: Predictor, stat: Literal["mean", "max"] = "mean") -> Optional[float]:
        """Predicted output deviation of one window: ``sum_j gain[start+j] * table[start][j]``.

        None where the window is not available from this profile (predictor undefined at
        ``start``, ``size`` beyond the table or past the last step).
        """
        tables = self.deviation if kind == "parallel" else self.reuse_deviation
        row = getattr(tables[predictor], stat)[start] if 0 <= start < self.num_steps else []
        if size < 1 or size > len(row):
            return None
        gain = self.propagation.gain
        return math.fsum(gain[start + j] * row[j] for j in range(size))

    @property
    def quality_samples(self) -> int:
        """How many per-sample error values each window carries (1 without ``output_errors``)."""
        return len(self.output_errors.samples) if self.output_errors is not None else 1

    def window_errors(self, kind: Literal["parallel", "reuse"], *, start: int, size: int,
                      predictor: Predictor) -> Optional[tuple[float, ...]]:
        """Predicted output error of one window, one value per calibration sample (see the module
        docstring); None where the window is not available from this profile."""
        if self.output_errors is None:
            v = self.window_deviation(kind, start=start, size=size, predictor=predictor)
            return None if v is None else (v,)
        row = getattr(self.output_errors, kind)[predictor][start] if 0 <= start < self.num_steps else []
        if size < 1 or size > len(row):
            return None
        return tuple(row[size - 1])

    def step_time_s(self) -> float:
        return self.compute.step_s + self.compute.step_overhead_s

    def sequential_time_s(self) -> float:
        return self.num_steps * (self.forward_time_s(1) + self.step_time_s())


def profile_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
