"""The deviation prior: what a profile holds where no weights exist to measure deviations.

A *rule*, not a measurement. Every number it produces is a function of the relative step
position and the window offset, with the constants in ``DEFAULT_PARAMS`` (stored in the
profile's ``Prior.params`` so ``derive_for_steps`` can recompute the tables for another step
count or max window). Plans made from it must say so (``Profile.prior_parts``).

The rule (T steps, step i, window start s, offset j; all 0-based)::

    h        = t_ref / T                                  relative step size (1 at the reference T)
    u_i      = (i + 0.5) / T                              position of the adjacent pair (i, i+1)
    d_i      = min(drift_cap, h * [drift_mid
                   + (drift_early - drift_mid) * exp(-u_i / tau_early)
                   + (drift_late  - drift_mid) * exp(-(1 - u_i) / tau_late)])
               relative change of the guided output between steps i and i+1, i = 0..T-2
    similarity.rel_l1[i] = d_i
    similarity.cosine[i] = max(-1, 1 - d_i**2 / 2)        (equal norms: cos = 1 - |a-b|^2 / 2)

    stand-in error m steps ahead of the last known output e_{s-1} (m >= 1):
    D(s, m)  = d_{s-1} + ... + d_{s+m-2}                  accumulated drift
    last:    err(s, m) = D(s, m)
    linear:  err(s, m) = linear_kappa * m**(linear_power - 1) * D(s, m)

    reuse_deviation[pred][s][j] = step_latent_rms * h * err(s, j + 1)
               (step s+j applies the stand-in: the step moves the latent by h * step_latent_rms
                per unit of output, so a relative output error err moves it by that much more)
    deviation[pred][s][0]       = 0                       (offset 0 sees the exact x_s)
    deviation[pred][s][j]       = sensitivity * h * sum_{k<j} reuse_deviation[pred][s][k]
               (offset j's input xhat_{s+j} is off by the j reuse steps before it; the denoiser
                turns an input error into an output error with gain ``sensitivity``, and the
                step scales it by h again)
    max = max_over_mean * mean
    propagation.gain[i] = gain_early + (1 - gain_early) * i / max(1, T - 1)
               (a deviation injected at the last step *is* the output's deviation: gain 1; one
                injected early is amplified by the steps after it — it moves the composition —
                so gain_early > 1; linear in between)

The digits floor (rule ``parastep-prior-v2``; active when the params hold ``floor.*`` keys, made by
``floor_params`` from a *measured* digits profile with per-sample ``output_errors``). A prior must
never be more aggressive than the evidence behind it, so every window's price is raised to two
floors taken from the bundled digits model (50 DDIM steps, windows up to 8, 20 calibration
samples). Windows are matched by relative position, not by step index::

    u = s / T, b = min(B - 1, floor(u * B))             u bin (B = floor.u_bins = 10; bin = 5 steps at 50)
    w_d = w * t_digits / T                              the window's span in digits steps
    q[k,p,b](w)  = max over digits starts s_d in bin b of quantile_0.9 over samples of
                   window_errors(k, s_d, w, p) / digits_output_rms      (measured, w = 1..j_digits)
                   (running max in w; points (0, 0), (w, q) interpolated linearly in w_d; beyond the
                   largest measured w_m: q(w_m) * (w_d / w_m) ** a[k,p], a = max(1, median over bins of
                   log2(q(w_m) / q(w_m / 2))): never cheaper per step than the longest measured window)
    rho[k,p,b](w) = max over s_d in bin b of quantile_0.9(window_errors(k, s_d, w, p))
                   / quantile_0.9(window_errors(parallel, s_d, max(w, 2), last))
                   (how much dearer than the paper's window of the same start and span; interpolated
                   linearly in w_d, clamped to the measured range; beyond it max(1, rho(w_m)) * (w_d / w_m) ** rho_growth: no kind
                   is priced below the paper's window on windows digits did not measure; end-to-end digits
                   runs at w = 8, 16, 30 from step 5 gave reuse/parallel 1.07, 1.33, 1.66 at the 90th percentile:
                   rho_growth = 0.33; from step 20 1.74, 2.9, 1.9)
    A(k,p,s,w) = output_rms * q[k,p,b](w_d)             absolute floor, output_rms = SDXL's latent RMS (1.0)
    E(parallel,last,s,w) = max(prior, A)                (running max in w)
    R(k,p,s,w) = rho[k,p,b](w_d) * E(parallel,last,s,max(w,2))     relative floor, other kinds/predictors
    E(k,p,s,w) = max(prior, A, R)                       (running max in w; parallel w = 1 stays 0)

and the tables are rewritten so that ``sum_j gain[s+j] * table[s][j]`` (``Profile.window_deviation``)
equals E: ``table[s][j] = (E(s, j+1) - E(s, j)) / gain[s+j]``. The constants (q, rho, a, the two RMS
values, t_digits, j_digits, B) live in the deviation part's ``Prior.params`` (keys ``floor.*``), so
``derive_for_steps`` applies the same floor at any T and max window. ``digits_output_rms`` = 0.7307 is
the RMS of the sequential outputs x_T of the 20 calibration samples at 50 steps (measured here; pixel
space in [-1, 1]); SDXL's scaled latents (VAE scaling_factor 0.13025) have RMS about 1 by construction.

Qualitative facts the unfloored rule reproduces (tests check each):

- low similarity in the first steps, high in the middle, a little lower at the end (the
  adjacent-step similarity curves of ParaStep, arXiv 2505.14741, Fig. 2; TeaCache, arXiv
  2411.19108; DeepCache, arXiv 2312.00858), and larger changes per step with fewer steps;
- error growing with offset j (quadratically for ``last``: j reuse steps each off by ~j drifts);
- ``linear`` better than ``last`` one step ahead and worse further out. ``linear_kappa`` and
  ``linear_power`` are fitted so that, with uniform drift and gain, windows of 2 give ``linear``
  an error 10**(-5.8/20) times ``last``'s and windows of 8 an error 10**(10.9/20) times — the
  +5.8 dB / -10.9 dB measured on the digits DDPM (docs/design.md §1). Closed form: window of 2 ->
  ratio = kappa; window of 8 -> kappa * sum_{j=1..7} sum_{m<=j} m**p / 84 (solved for p).

The absolute scale (``step_latent_rms``, ``sensitivity``) is a guess of the right order for
unit-variance latents; without weights nothing better is possible. A measured profile
(``parastep profile``) replaces every one of these numbers.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from .model import PREDICTORS, DeviationStats, Predictor, Prior, Profile, Propagation, Similarity

RULE_NAME = "parastep-prior-v2"
RULE_NAMES = ("parastep-prior-v1", "parastep-prior-v2")   # v1: no digits floor (older profiles)
FLOOR = "floor."

DEFAULT_PARAMS: Mapping[str, float] = MappingProxyType({
    "t_ref": 50.0,             # step count the drift constants describe
    "drift_mid": 0.04,         # relative output change per step in the middle of a t_ref-step run
    "drift_early": 0.80,       # ... at the first step (outputs change fast while noise dominates)
    "tau_early": 0.05,         # decay of the early excess, in fractions of the run (2.5 steps at 50)
    "drift_late": 0.12,        # ... at the last step (fine detail)
    "tau_late": 0.05,          # decay of the late excess
    "drift_cap": 2.0,          # rel L1 of two outputs of similar norm stays below 2
    "linear_kappa": 0.5128614,   # = 10**(-5.8/20): linear/last error one step ahead
    "linear_power": 2.3539316,   # linear error grows as m**(p-1) faster than last's (fit: -10.9 dB at w=8)
    "step_latent_rms": 0.1,    # latent RMS a reference step moves per unit relative output change
    "sensitivity": 0.124,      # output error per unit input error times the step size, at t_ref: an eps-prediction
                               # denoiser has d(eps)/dx ~ 1/sigma at high noise and an Euler step moves sigma by
                               # d(sigma), so ~ d(sigma)/sigma = ln(sigma_max/sigma_min)/T = ln(14.6/0.029)/50 for SDXL
    "gain_early": 2.0,         # propagation gain at the first step (exactly 1 at the last: its deviation is the
                               # output's); > 1 because an early error changes the composition, which a PSNR
                               # against the sequential output punishes most
    "max_over_mean": 1.5,      # worst prompt/seed vs mean
})

REFERENCE = ("ParaStep, arXiv 2505.14741 (reuse-then-predict; adjacent-step similarity is low in the first steps, "
             "high in the middle); TeaCache, arXiv 2411.19108 and DeepCache, arXiv 2312.00858 (adjacent-step output "
             "similarity curves); linear-vs-last constants fitted to the digits DDPM measurements of docs/design.md §1 "
             "(+5.8 dB at windows of 2, -10.9 dB at windows of 8); rule documented in parastep/profiles/priors.py")

RULE_TEXT = ("parastep-prior-v2 (parastep/profiles/priors.py): h=t_ref/T; d_i=min(cap, h*(mid+(early-mid)exp(-u/tau_early)"
             "+(late-mid)exp(-(1-u)/tau_late))), u=(i+0.5)/T; rel_l1=d, cosine=1-d^2/2; D(s,m)=d_{s-1}+..+d_{s+m-2}; "
             "err_last=D, err_linear=kappa*m^(p-1)*D; reuse[s][j]=step_latent_rms*h*err(s,j+1); "
             "parallel[s][j]=sensitivity*h*sum_{k<j} reuse[s][k]; max=max_over_mean*mean; "
             "gain_i=gain_early+(1-gain_early)*i/(T-1)")

FLOOR_TEXT = ("digits floor (params floor.*): u=s/T, bin b=floor(u*B), w_d=w*t_digits/T; "
              "q[k,p,b](w)=max_{s_d in b} q90_samples(digits window_errors(k,s_d,w,p))/digits_output_rms, interpolated in w_d "
              "from (0,0), beyond the measured w_m q(w_m)*(w_d/w_m)^a[k,p] (a>=1); "
              "rho[k,p,b](w)=max_{s_d in b} q90(k,s_d,w,p)/q90(parallel,s_d,max(w,2),last), clamped, beyond w_m max(1,rho(w_m))*(w_d/w_m)^rho_growth; "
              "E(parallel,last)=max(prior, output_rms*q); E(k,p)=max(prior, output_rms*q, rho*E(parallel,last,s,max(w,2))); "
              "running max in w; table[s][j]=(E(s,j+1)-E(s,j))/gain[s+j] so window_deviation = E")


def _params(params: Mapping[str, float] | None) -> dict[str, float]:
    out = dict(DEFAULT_PARAMS)
    if params:
        unknown = sorted(k for k in set(params) - set(DEFAULT_PARAMS) if not k.startswith(FLOOR))
        if unknown:
            raise ValueError(f"unknown prior parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
        out.update({k: float(v) for k, v in params.items()})
    return out


def drift(*, num_steps: int, params: Mapping[str, float] | None = None) -> list[float]:
    """d_i for i = 0..T-2: relative change of the guided output from step i to i+1."""
    p = _params(params)
    T = num_steps
    h = p["t_ref"] / T
    out = []
    for i in range(T - 1):
        u = (i + 0.5) / T
        base = (p["drift_mid"]
                + (p["drift_early"] - p["drift_mid"]) * math.exp(-u / p["tau_early"])
                + (p["drift_late"] - p["drift_mid"]) * math.exp(-(1.0 - u) / p["tau_late"]))
        out.append(min(p["drift_cap"], h * base))
    return out


def stand_in_error(d: list[float], *, start: int, ahead: int, predictor: Predictor,
                   params: Mapping[str, float] | None = None) -> float:
    """Relative error of the stand-in for e_{start+ahead-1} built from outputs before ``start``."""
    p = _params(params)
    acc = 0.0
    for x in d[start - 1:start + ahead - 1]:
        acc += x
    if predictor == "last":
        return acc
    return p["linear_kappa"] * ahead ** (p["linear_power"] - 1.0) * acc


def similarity(*, num_steps: int, params: Mapping[str, float] | None = None) -> Similarity:
    d = drift(num_steps=num_steps, params=params)
    return Similarity(cosine=[max(-1.0, 1.0 - x * x / 2.0) for x in d], rel_l1=list(d))


def propagation(*, num_steps: int, params: Mapping[str, float] | None = None) -> Propagation:
    p = _params(params)
    span = max(1, num_steps - 1)
    return Propagation(gain=[p["gain_early"] + (1.0 - p["gain_early"]) * i / span for i in range(num_steps)])


def deviation_tables(*, num_steps: int, max_window: int, params: Mapping[str, float] | None = None,
                     floor: bool = True) -> tuple[dict[Predictor, DeviationStats], dict[Predictor, DeviationStats]]:
    """(deviation, reuse_deviation) per predictor, row lengths as ``Profile`` requires.

    With ``floor.*`` params (and ``floor=True``) the digits floor of the module docstring is applied;
    ``floor=False`` gives the bare rule."""
    p = _params(params)
    T, J = num_steps, max_window
    h = p["t_ref"] / T
    d = drift(num_steps=T, params=p)
    kappa, power = p["linear_kappa"], p["linear_power"]
    reuse_scale, par_scale = p["step_latent_rms"] * h, p["sensitivity"] * h
    parallel: dict[Predictor, DeviationStats] = {}
    reuse: dict[Predictor, DeviationStats] = {}
    rows: dict[tuple[str, Predictor], list[list[float]]] = {}
    for pred in PREDICTORS:
        first_valid = 1 if pred == "last" else 2
        par_rows: list[list[float]] = []
        reu_rows: list[list[float]] = []
        for s in range(T):
            if s < first_valid:
                par_rows.append([])
                reu_rows.append([])
                continue
            n = min(J, T - s)
            reu, par = [], [0.0]
            drift_sum = 0.0       # D(s, m), accumulated in order (same numbers as stand_in_error)
            for j in range(n):
                m = j + 1
                drift_sum += d[s + m - 2]
                err = drift_sum if pred == "last" else kappa * m ** (power - 1.0) * drift_sum
                reu.append(reuse_scale * err)
            running = 0.0
            for j in range(1, n):
                running += reu[j - 1]
                par.append(par_scale * running)
            par_rows.append(par)
            reu_rows.append(reu)
        rows[("parallel", pred)] = par_rows
        rows[("reuse", pred)] = reu_rows
    if floor and has_floor(p):
        rows = _apply_floor(rows, num_steps=T, params=p)
    k = p["max_over_mean"]
    for pred in PREDICTORS:
        par_rows, reu_rows = rows[("parallel", pred)], rows[("reuse", pred)]
        parallel[pred] = DeviationStats(mean=par_rows, max=[[k * v for v in row] for row in par_rows])
        reuse[pred] = DeviationStats(mean=reu_rows, max=[[k * v for v in row] for row in reu_rows])
    return parallel, reuse


# ---- the digits floor -----------------------------------------------------------------------

KINDS = ("parallel", "reuse")


def has_floor(params: Mapping[str, float] | None) -> bool:
    return bool(params) and f"{FLOOR}u_bins" in params


def _q90(values) -> float:
    v = sorted(values)
    pos = FLOOR_QUANTILE * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


FLOOR_QUANTILE = 0.9
DIGITS_OUTPUT_RMS = 0.7307   # RMS of the sequential x_T, 20 calibration samples (digits '0'-'9' x seeds 0, 1), 50 DDIM steps
SDXL_OUTPUT_RMS = 1.0        # SDXL latents times the VAE scaling_factor 0.13025: unit variance by construction
FLOOR_U_BINS = 10
RHO_GROWTH = 0.33            # beyond the measured window rho grows as (w_d / w_m) ** 0.33: end-to-end digits runs (50 steps,
                             # 20 samples, q90) of single windows from step 5 gave reuse/parallel 1.07, 1.33, 1.66 at w = 8, 16, 30


def floor_params(digits: Profile, *, digits_output_rms: float = DIGITS_OUTPUT_RMS, output_rms: float = SDXL_OUTPUT_RMS,
                 u_bins: int = FLOOR_U_BINS) -> dict[str, float]:
    """The ``floor.*`` constants from a measured digits profile with per-sample ``output_errors``."""
    if digits.output_errors is None or digits.provenance.deviation.source != "measured":
        raise ValueError(f"profile '{digits.name}' has no measured per-sample output_errors to take a floor from")
    Td, Jd = digits.num_steps, digits.max_window
    out: dict[str, float] = {f"{FLOOR}t_digits": float(Td), f"{FLOOR}j_digits": float(Jd), f"{FLOOR}u_bins": float(u_bins),
                             f"{FLOOR}quantile": FLOOR_QUANTILE, f"{FLOOR}digits_output_rms": digits_output_rms,
                             f"{FLOOR}output_rms": output_rms, f"{FLOOR}rho_growth": RHO_GROWTH}
    q90 = {}
    for kind in KINDS:
        for pred in PREDICTORS:
            for s in range(Td):
                for w in range(1, Jd + 1):
                    e = digits.window_errors(kind, start=s, size=w, predictor=pred)
                    if e is not None:
                        q90[(kind, pred, s, w)] = _q90(e)
    for kind in KINDS:
        for pred in PREDICTORS:
            slopes = []
            for b in range(u_bins):
                starts = [s for s in range(Td) if min(u_bins - 1, int(s * u_bins // Td)) == b]
                best = 0.0
                qs = {}
                for w in range(1, Jd + 1):
                    vals = [q90[(kind, pred, s, w)] for s in starts if (kind, pred, s, w) in q90]
                    if not vals:
                        continue
                    best = max(best, max(vals) / digits_output_rms)          # running max in w
                    qs[w] = best
                    out[f"{FLOOR}q.{kind}.{pred}.{b}.{w}"] = best
                    if (kind, pred) != ("parallel", "last"):
                        ratios = [q90[(kind, pred, s, w)] / q90[("parallel", "last", s, max(w, 2))] for s in starts
                                  if (kind, pred, s, w) in q90 and q90.get(("parallel", "last", s, max(w, 2)), 0.0) > 0]
                        if ratios:
                            out[f"{FLOOR}rho.{kind}.{pred}.{b}.{w}"] = max(ratios)
                wm = max(qs, default=0)
                if wm >= 4 and wm == Jd and qs.get(wm // 2, 0) > 0:
                    slopes.append(math.log2(qs[wm] / qs[wm // 2]))
            slopes.sort()
            med = slopes[len(slopes) // 2] if slopes else 1.0
            out[f"{FLOOR}a.{kind}.{pred}"] = max(1.0, med)
    return out


def _curve(params: Mapping[str, float], name: str, kind: str, pred: str, b: int) -> list[tuple[int, float]]:
    jd = int(params[f"{FLOOR}j_digits"])
    return [(w, params[key]) for w in range(1, jd + 1) if (key := f"{FLOOR}{name}.{kind}.{pred}.{b}.{w}") in params]


def floor_q(params: Mapping[str, float], kind: str, pred: str, b: int, wd: float) -> float:
    """The absolute floor's q (relative to the output RMS) at a span of ``wd`` digits steps."""
    pts = [(0, 0.0)] + [(w, v) for w, v in _curve(params, "q", kind, pred, b) if v > 0]
    if len(pts) == 1:
        return 0.0
    wm, vm = pts[-1]
    if wd >= wm:
        return vm * (wd / wm) ** params[f"{FLOOR}a.{kind}.{pred}"]
    for (w0, v0), (w1, v1) in zip(pts, pts[1:]):
        if wd <= w1:
            return v0 + (v1 - v0) * (wd - w0) / (w1 - w0)
    return vm


def floor_rho(params: Mapping[str, float], kind: str, pred: str, b: int, wd: float) -> float:
    """The relative floor's factor over the paper's window (parallel, last) at a span of ``wd`` digits steps."""
    pts = _curve(params, "rho", kind, pred, b)
    if not pts:
        return 0.0
    if wd <= pts[0][0]:
        return pts[0][1]
    wm, vm = pts[-1]
    if wd > wm:
        return max(1.0, vm) * (wd / wm) ** params.get(f"{FLOOR}rho_growth", 0.0)
    for (w0, v0), (w1, v1) in zip(pts, pts[1:]):
        if wd <= w1:
            return v0 + (v1 - v0) * (wd - w0) / (w1 - w0)
    return vm


def window_floor(params: Mapping[str, float], kind: str, pred: str, *, start: int, size: int, num_steps: int,
                 paper_window: float | None = None) -> float:
    """max(A, R) of the module docstring for one window (``paper_window``: E(parallel, last, start, max(size, 2)))."""
    if kind == "parallel" and size < 2:
        return 0.0
    B = int(params[f"{FLOOR}u_bins"])
    b = min(B - 1, int(start * B // num_steps))
    wd = size * params[f"{FLOOR}t_digits"] / num_steps
    value = params[f"{FLOOR}output_rms"] * floor_q(params, kind, pred, b, wd)
    if (kind, pred) != ("parallel", "last") and paper_window is not None:
        value = max(value, floor_rho(params, kind, pred, b, wd) * paper_window)
    return value


def _apply_floor(rows: dict, *, num_steps: int, params: Mapping[str, float]) -> dict:
    T = num_steps
    gain = propagation(num_steps=T, params={k: v for k, v in params.items() if not k.startswith(FLOOR)}).gain
    B = int(params[f"{FLOOR}u_bins"])
    cache: dict = {}

    def fl(kind, pred, s, w, paper):
        b = min(B - 1, int(s * B // T))
        key = (kind, pred, b, w)
        if key not in cache:
            wd = w * params[f"{FLOOR}t_digits"] / T
            cache[key] = (params[f"{FLOOR}output_rms"] * floor_q(params, kind, pred, b, wd),
                          floor_rho(params, kind, pred, b, wd) if (kind, pred) != ("parallel", "last") else 0.0)
        a, rho = cache[key]
        if kind == "parallel" and w < 2:
            return 0.0
        return max(a, rho * paper) if paper is not None else a

    def floored(kind, pred, s, row, paper_cum):
        out, prior_cum, E_prev = [], 0.0, 0.0
        for j, v in enumerate(row):
            prior_cum += gain[s + j] * v
            w = j + 1
            paper = None if paper_cum is None else paper_cum[max(w, 2) - 1] if max(w, 2) <= len(paper_cum) else None
            E = max(E_prev, prior_cum, fl(kind, pred, s, w, paper))
            out.append(E)
            E_prev = E
        return out

    def increments(s, cum):
        return [(c - (cum[j - 1] if j else 0.0)) / gain[s + j] for j, c in enumerate(cum)]

    new = {}
    paper_rows = [floored("parallel", "last", s, row, None) for s, row in enumerate(rows[("parallel", "last")])]
    new[("parallel", "last")] = [increments(s, cum) for s, cum in enumerate(paper_rows)]
    for kind in KINDS:
        for pred in PREDICTORS:
            if (kind, pred) == ("parallel", "last"):
                continue
            new[(kind, pred)] = [increments(s, floored(kind, pred, s, row, paper_rows[s] or None))
                                 for s, row in enumerate(rows[(kind, pred)])]
    return new


def provenance(params: Mapping[str, float] | None = None, *, what: str = "") -> Prior:
    """The ``Prior`` label for parts produced by this rule (``what`` is appended to the rule)."""
    p = _params(params)
    rule = RULE_TEXT + (f"; {FLOOR_TEXT}" if has_floor(p) else "") + (f"; {what}" if what else "")
    return Prior(rule=rule, reference=REFERENCE, params=p)


def _rule_params(part) -> dict[str, float] | None:
    if part.source == "prior" and part.rule.startswith(RULE_NAMES):
        return dict(part.params)
    return None


def derive_for_steps(profile: Profile, *, num_steps: int, max_window: int) -> Profile:
    """The profile re-derived for ``num_steps`` steps and windows up to ``max_window``.

    Prior parts (deviation, propagation, similarity) are recomputed from the rule with the
    constants stored in the profile's provenance; compute, comm and output size are kept
    (they do not depend on the step count). A measured step-dependent part cannot be
    re-derived: ValueError (the planner turns it into a UserError telling the user to
    re-profile), except the lossless case of the same step count and a max window no larger
    than the measured one (rows are truncated).
    """
    if num_steps < 1 or max_window < 1:
        raise ValueError(f"num_steps and max_window must be >= 1, got {num_steps} and {max_window}")
    prov = profile.provenance
    measured = [name for name in ("deviation", "propagation", "similarity") if getattr(prov, name).source == "measured"]
    if measured:
        if num_steps == profile.num_steps and max_window <= profile.max_window and prov.deviation.source == "measured":
            return _truncate(profile, max_window=max_window)
        raise ValueError(
            f"profile '{profile.name}' has measured {', '.join(measured)} for {profile.num_steps} steps and max window "
            f"{profile.max_window}; it cannot be re-derived for {num_steps} steps / max window {max_window}: re-profile with "
            f"'parastep profile --model {profile.model} --steps {num_steps} --max-window {max_window}'")
    foreign = [name for name in ("deviation", "propagation", "similarity") if _rule_params(getattr(prov, name)) is None]
    if foreign:
        raise ValueError(f"profile '{profile.name}': prior part(s) {foreign} were not made by rule {' or '.join(RULE_NAMES)}, so they "
                         f"cannot be re-derived; re-profile for {num_steps} steps")
    dev_params = _rule_params(prov.deviation)
    dev, reuse = deviation_tables(num_steps=num_steps, max_window=max_window, params=dev_params)
    same_steps = num_steps == profile.num_steps
    data = profile.model_dump(mode="python")
    data.update({
        "num_steps": num_steps,
        "max_window": max_window,
        "deviation": {k: v.model_dump() for k, v in dev.items()},
        "reuse_deviation": {k: v.model_dump() for k, v in reuse.items()},
        "propagation": propagation(num_steps=num_steps, params=_rule_params(prov.propagation)).model_dump(),
        "similarity": similarity(num_steps=num_steps, params=_rule_params(prov.similarity)).model_dump(),
    })
    if not same_steps:  # a calibration was fitted on plans of the original step count: it does not carry over
        data["calibration"] = None
        data["provenance"]["calibration"] = None
    return Profile.model_validate(data)


def _truncate(profile: Profile, *, max_window: int) -> Profile:
    data = profile.model_dump(mode="python")
    data["max_window"] = max_window
    for table in ("deviation", "reuse_deviation"):
        for pred in PREDICTORS:
            for stat in ("mean", "max"):
                data[table][pred][stat] = [row[:max_window] for row in data[table][pred][stat]]
    return Profile.model_validate(data)


# ---- CFG split: the half-forward prior ----------------------------------------------------------

HALF_FORWARD_RULE = "parastep-half-forward-v1"
HALF_FORWARD_RATIO = "half_forward_ratio"


def half_forward_prior(forward_s: float, *, ratio: float) -> float:
    """A prior ``Compute.half_forward_s`` for a model that runs a two-way guided batch: ``ratio``
    x the whole forward ``forward_s`` (``compute.forward_s[0]``, batch 2B). A half does half the
    work, so ``ratio`` is 0.5 plus what does not halve (launches, weight reads, small-batch
    inefficiency); it is a stated constant, never a measurement. Without CFG there is no half: no
    prior either."""
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"a half-forward ratio must be in (0, 1], got {ratio}")
    return ratio * forward_s


def half_forward_rule(ratio: float, *, why: str) -> tuple[str, dict[str, float]]:
    """(rule words, params) for the compute part of a prior profile with ``half_forward_prior``."""
    return (f"{HALF_FORWARD_RULE}: half_forward_s = {HALF_FORWARD_RATIO} x forward_s[0] = {ratio:g} x the whole forward "
            f"(one CFG half, batch B instead of 2B; {why})", {HALF_FORWARD_RATIO: ratio})
