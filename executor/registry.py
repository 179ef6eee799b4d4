"""The model registry: names -> diffusers pipelines, loaded offline (docs/design.md §5).

``REGISTRY`` is an immutable mapping from a model name (``sdxl``, ``sd15``, ``sd3``,
``pixart-sigma``, ``flux``, ``digits``, ``flowdigits``) to a :class:`ModelSpec`: the pipeline class,
where the weights come from (a Hugging Face repo id, or the bundled package folder for ``digits``
and ``flowdigits``) and the defaults a user gets (scheduler class, resolution, guidance scale,
step count). The bundled models are both class-conditional digit models (prompt = a class label
'0'..'9'): ``digits`` a DDPM UNet, ``flowdigits`` a flow-matching DiT (the SD3/Flux family);
:data:`DIGIT_PIPELINES` names their pipeline classes for the inputs that treat them alike.

Nothing here ever downloads. :func:`load_pipeline` loads

- ``model_path=DIR``: any diffusers pipeline folder; its class is read from ``DIR/model_index.json``;
- otherwise the registry entry's repo id from the local Hugging Face cache only
  (``local_files_only=True``; the cache directory is huggingface_hub's ``HF_HUB_CACHE``, i.e.
  ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``);
- ``digits`` / ``flowdigits``: the folder of the package ``parastep.models.digits`` / ``parastep.models.flowdigits``.

Anything missing is a :class:`parastep.errors.UserError` with one line naming where it looked and
how to provide the model. :func:`set_scheduler` swaps a pipeline's scheduler by class name (refusing
one of the wrong family: epsilon/v-prediction vs flow matching); :func:`describe` gives one line
per model for messages; :func:`folder_identity` names a pipeline folder by its configs. (The
denoiser lookup has one home: ``executor.hooks.denoiser_of``.)

Loaded weights are views into the memory-mapped safetensors files; on CPU their unaligned
addresses can change the last bits of some matmuls versus the same weights built in memory
(~2e-7). Compare runs on the same loaded instance (or copy the weights) when asserting bit-exactness.

Flux: the registry's ``flux`` is FLUX.1-dev (guidance-distilled, 28-50 steps). Its guidance scale
is an *embedding* input of the transformer, not classifier-free guidance: the pipeline calls its
transformer once per step with batch 1 (unless ``true_cfg_scale > 1`` with a negative prompt,
which calls it twice per step; the executor refuses that). FLUX.1-schnell (4 steps, no guidance
embedding) loads with ``--model-path`` like any other folder; with only 4 steps there is little
to parallelize, which is why dev is the registry default.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

from ..errors import UserError

if TYPE_CHECKING:  # torch / diffusers are imported lazily so that importing the registry is cheap
    import torch
    from diffusers import DiffusionPipeline

SchedulerName = Literal[
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "PNDMScheduler",
]
SCHEDULER_NAMES: tuple[str, ...] = SchedulerName.__args__  # type: ignore[attr-defined]

# Keyword overrides applied by set_scheduler() on top of the pipeline's scheduler config.
# DPMSolverMultistepScheduler is pinned to deterministic DPM-Solver++ (2M); the SDE variants draw noise.
_SCHEDULER_OVERRIDES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "DDIMScheduler": MappingProxyType({}),
        "EulerDiscreteScheduler": MappingProxyType({}),
        "DPMSolverMultistepScheduler": MappingProxyType({"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "FlowMatchEulerDiscreteScheduler": MappingProxyType({}),
        "PNDMScheduler": MappingProxyType({"skip_prk_steps": True}),
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``source`` is ``"hf"`` (repo id in the local HF cache) or ``"package"``."""

    name: str
    pipeline_class: str  # diffusers class name, or "module.path:ClassName" for our own pipelines
    repo_id: str | None  # Hugging Face repo id (None for the bundled model)
    source: Literal["hf", "package"]
    default_scheduler: str  # scheduler class the weights ship with
    default_resolution_px: tuple[int, int]  # (height, width)
    default_guidance_scale: float
    default_steps: int
    guidance: Literal["cfg", "embedded"]  # "cfg": one batched (uncond, cond) forward per step
    schedulers: tuple[str, ...]  # scheduler classes tested with this pipeline (tests/test_registry.py)
    package: str | None = None  # for source == "package": the package whose folder holds the weights
    note: str = ""

    @property
    def pipeline_class_name(self) -> str:
        return self.pipeline_class.rsplit(":", 1)[-1]


_UNET_SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")

REGISTRY: Mapping[str, ModelSpec] = MappingProxyType(
    {
        "sdxl": ModelSpec(
            name="sdxl",
            pipeline_class="StableDiffusionXLPipeline",
            repo_id="stabilityai/stable-diffusion-xl-base-1.0",
            source="hf",
            default_scheduler="EulerDiscreteScheduler",
            default_resolution_px=(1024, 1024),
            default_guidance_scale=5.0,
            default_steps=50,
            guidance="cfg",
            schedulers=_UNET_SCHEDULERS,
        ),
        "sd15": ModelSpec(
            name="sd15",
            pipeline_class="StableDiffusionPipeline",
            repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            source="hf",
            default_scheduler="PNDMScheduler",
            default_resolution_px=(512, 512),
            default_guidance_scale=7.5,
            default_steps=50,
            guidance="cfg",
            schedulers=(*_UNET_SCHEDULERS, "PNDMScheduler"),
            note="PNDM (PLMS) runs num_inference_steps + 1 denoiser calls (one repeated timestep), still one per scheduler step",
        ),
        "sd3": ModelSpec(
            name="sd3",
            pipeline_class="StableDiffusion3Pipeline",
            repo_id="stabilityai/stable-diffusion-3-medium-diffusers",
            source="hf",
            default_scheduler="FlowMatchEulerDiscreteScheduler",
            default_resolution_px=(1024, 1024),
            default_guidance_scale=7.0,
            default_steps=28,
            guidance="cfg",
            schedulers=("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler"),
        ),
        "pixart-sigma": ModelSpec(
            name="pixart-sigma",
            pipeline_class="PixArtSigmaPipeline",
            repo_id="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
            source="hf",
            default_scheduler="DPMSolverMultistepScheduler",
            default_resolution_px=(1024, 1024),
            default_guidance_scale=4.5,
            default_steps=20,
            guidance="cfg",
            schedulers=_UNET_SCHEDULERS,
            note="predicts a learned variance too; the pipeline keeps the epsilon half before scheduler.step",
        ),
        "flux": ModelSpec(
            name="flux",
            pipeline_class="FluxPipeline",
            repo_id="black-forest-labs/FLUX.1-dev",
            source="hf",
            default_scheduler="FlowMatchEulerDiscreteScheduler",
            default_resolution_px=(1024, 1024),
            default_guidance_scale=3.5,
            default_steps=28,
            guidance="embedded",
            schedulers=("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler"),
            note="FLUX.1-dev: guidance is an embedding (one batch-1 forward per step); gated repo: accept its license on huggingface.co before downloading",
        ),
        "digits": ModelSpec(
            name="digits",
            pipeline_class="parastep.models.digits.pipeline:DigitsPipeline",
            repo_id=None,
            source="package",
            default_scheduler="DDIMScheduler",
            default_resolution_px=(16, 16),
            default_guidance_scale=1.5,
            default_steps=50,
            guidance="cfg",
            schedulers=_UNET_SCHEDULERS,
            package="parastep.models.digits",
            note="bundled class-conditional pixel-space model; weights ship in the package; the saved pipeline config is authoritative for resolution, scheduler and guidance",
        ),
        "flowdigits": ModelSpec(
            name="flowdigits",
            pipeline_class="parastep.models.flowdigits.pipeline:FlowDigitsPipeline",
            repo_id=None,
            source="package",
            default_scheduler="FlowMatchEulerDiscreteScheduler",
            default_resolution_px=(16, 16),
            default_guidance_scale=1.5,
            default_steps=28,
            guidance="cfg",
            schedulers=("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler"),
            package="parastep.models.flowdigits",
            note="bundled class-conditional pixel-space flow-matching transformer (DiT, rectified flow: the SD3/Flux family); "
                 "weights ship in the package; the saved pipeline config is authoritative for resolution, scheduler and guidance",
        ),
    }
)

# The bundled models' pipeline classes: class-conditional digit models whose prompt is a class label
# '0'..'9' (executor.inputs: default prompt '7', evaluate's classes 0-9, the prompt check before
# loading; the profiler's default prompts and resolution).
DIGIT_PIPELINES: frozenset[str] = frozenset(s.pipeline_class_name for s in REGISTRY.values() if s.source == "package")


def get_spec(model: str) -> ModelSpec:
    """The registry entry for ``model``; an unknown name is a UserError listing the known ones."""
    try:
        return REGISTRY[model]
    except KeyError:
        raise UserError(
            f"unknown model '{model}': known models are {', '.join(REGISTRY)}; for any other diffusers pipeline pass --model-path DIR"
        ) from None


def describe(model: str) -> str:
    """One line for messages: what ``model`` is and where it is loaded from."""
    spec = get_spec(model)
    where = f"HF repo {spec.repo_id} (local cache only)" if spec.source == "hf" else f"package folder of {spec.package}"
    h, w = spec.default_resolution_px
    return (
        f"{spec.name}: {spec.pipeline_class_name} from {where}; defaults {spec.default_scheduler}, {h}x{w} px, "
        f"{spec.default_steps} steps, guidance {spec.default_guidance_scale:g} ({spec.guidance})"
    )


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory that load_pipeline() searches (read at call time)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def package_folder(spec: ModelSpec) -> Path:
    """The folder of a bundled model's package (``source == "package"``), without importing torch."""
    assert spec.package is not None
    module = importlib.import_module(spec.package)
    return Path(module.__file__).resolve().parent


def _resolve_class(spec_class: str) -> Any:
    """Import a pipeline class: a diffusers class name or ``module.path:ClassName``."""
    if ":" in spec_class:
        module_name, class_name = spec_class.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(f"pipeline module {module_name} cannot be imported ({exc}); reinstall parastep (pip install -e .)") from None
        return getattr(module, class_name)
    import diffusers

    return getattr(diffusers, spec_class)


def _custom_class_for(class_name: str) -> Any | None:
    """Our own (non-diffusers) pipeline class named ``class_name`` in a model_index.json, if any."""
    for spec in REGISTRY.values():
        if ":" in spec.pipeline_class and spec.pipeline_class_name == class_name:
            return _resolve_class(spec.pipeline_class)
    return None


def _read_model_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist; pass --model-path a folder written by DiffusionPipeline.save_pretrained()")
    if not index.is_file():
        raise UserError(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder; pass --model-path a folder written by DiffusionPipeline.save_pretrained()"
        )
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{index} is not valid JSON ({exc}); re-save the pipeline with save_pretrained()") from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise UserError(f"{index} has no '_class_name'; re-save the pipeline with save_pretrained()")
    return data


def _from_pretrained(cls: Any, source: str | Path, *, dtype: "torch.dtype | None", where: str, **kwargs: Any) -> "DiffusionPipeline":
    options: dict[str, Any] = {"local_files_only": True, **kwargs}
    if dtype is not None:
        options["torch_dtype"] = dtype
    import warnings

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()       # no "accelerate not found" / loading chatter per rank
    diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch_dtype -> dtype rename (diffusers >= 0.36)
            return cls.from_pretrained(str(source), **options)
    except OSError as exc:  # incomplete cache / folder: a file a component needs is missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not load the pipeline from {where}: {first}; re-download it or re-save it with save_pretrained()") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
        diffusers_logging.enable_progress_bar()


@dataclass(frozen=True)
class Location:
    """Where a model's weights are (checked to exist, nothing loaded): see :func:`locate`."""

    source: str                       # folder path, or HF repo id (then ``cache_dir`` is set)
    where: str                        # what error messages name
    class_name: Optional[str]         # "module:Class" of the pipeline, None = from model_index.json
    cache_dir: Optional[str] = None
    folder: Optional[str] = None      # the pipeline folder (for an HF repo: its cached snapshot)


def locate(model: str, *, model_path: str | os.PathLike[str] | None = None,
           cache_dir: str | os.PathLike[str] | None = None) -> Location:
    """Find ``model`` offline without loading it; a missing model is a one-line ``UserError``
    saying where parastep looked and how to provide it. Cheap: the CLI calls it before it
    starts any process.

    ``model`` may also be a pipeline folder (what ``profile --model-path DIR`` records as the
    model of a folder given without ``--model``): a name that is not in the registry but is a
    folder with a ``model_index.json`` is that folder."""
    if model_path is None and model not in REGISTRY and (Path(model).expanduser() / "model_index.json").is_file():
        model_path = model
    if model_path is not None:
        folder = Path(model_path).expanduser()
        found = _read_model_index(folder)["_class_name"]
        named = get_spec(model).pipeline_class_name if model in REGISTRY else found
        if found != named:
            raise UserError(f"--model-path {model_path} holds a {found}, but model '{model}' is a "
                            f"{named}; pass a folder of that model, or profile this folder "
                            f"on its own (parastep profile --model-path {model_path}, no --model) and plan from that")
        return Location(source=str(folder), where=str(folder), class_name=None, folder=str(folder))
    if model not in REGISTRY and (os.sep in model or model.startswith("~")):
        # a profile of a folder records the folder's path as its model: the folder has moved or gone
        what = "has no model_index.json" if Path(model).expanduser().is_dir() else "does not exist"
        raise UserError(f"model folder {model} (the folder the profile was made from) {what}: moved or deleted? "
                        "pass --model-path DIR with the same pipeline")

    spec = get_spec(model)
    if spec.source == "package":
        folder = package_folder(spec)
        if not (folder / "model_index.json").is_file():
            raise UserError(
                f"bundled model '{model}' is not in {folder} (no model_index.json); reinstall parastep from a checkout that includes its weights, or pass --model-path DIR"
            )
        return Location(source=str(folder), where=str(folder), class_name=spec.pipeline_class, folder=str(folder))

    assert spec.repo_id is not None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
    repo_folder = cache / ("models--" + spec.repo_id.replace("/", "--"))
    index = _cached_model_index(spec.repo_id, cache)
    if index is None:
        raise UserError(
            f"model '{model}' ({spec.repo_id}) is not in the local Hugging Face cache (looked in {repo_folder}); "
            f"on a machine with internet run 'hf download {spec.repo_id}' (older huggingface_hub: 'huggingface-cli download {spec.repo_id}') "
            f"and copy {repo_folder.name} into {cache} (or point HF_HOME at that cache), or pass --model-path DIR"
        )
    return Location(source=spec.repo_id, where=str(repo_folder), class_name=spec.pipeline_class, cache_dir=str(cache),
                    folder=str(index.parent))


def load_pipeline(
    model: str,
    *,
    model_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: "torch.dtype | None" = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> "DiffusionPipeline":
    """Load ``model`` offline and move it to ``device`` (never downloads).

    ``model_path``: a diffusers pipeline folder (its class from ``model_index.json``); ``model`` is
    then only a label and need not be in the registry. Otherwise ``model`` must be a registry name:
    ``hf`` models come from the local HF cache (``cache_dir``, default :func:`hf_cache_dir`),
    ``digits`` / ``flowdigits`` from their package folders. ``dtype`` is passed as ``torch_dtype`` (None: as saved).
    """
    loc = locate(model, model_path=model_path, cache_dir=cache_dir)
    if loc.class_name is not None:
        cls = _resolve_class(loc.class_name)
    else:
        cls = _custom_class_for(_read_model_index(Path(loc.source))["_class_name"])
        if cls is None:
            from diffusers import DiffusionPipeline

            cls = DiffusionPipeline
    extra = {"cache_dir": loc.cache_dir} if loc.cache_dir is not None else {}
    pipe = _from_pretrained(cls, loc.source, dtype=dtype, where=loc.where, **extra)
    return pipe.to(device)


def _cached_model_index(repo_id: str, cache: Path) -> Optional[Path]:
    """The cached ``model_index.json`` of ``repo_id`` (revision ``main``), or None; no network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=str(cache))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


# ---- a folder's identity and size (no weights read) -------------------------------------------

# Keys that record who saved a config, not what it configures: a copy re-saved by another
# diffusers/transformers version, or from another path, is the same model.
_PROVENANCE_KEYS = frozenset({"_diffusers_version", "_name_or_path", "transformers_version", "_commit_hash"})
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf")


def _component_names(index: Mapping[str, Any]) -> list[str]:
    """The components a ``model_index.json`` lists (``name: [library, class]``; unset ones are null)."""
    return sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None)


def _config_files(folder: Path) -> list[Path]:
    """``model_index.json`` and every component's config JSON (``config.json``,
    ``scheduler_config.json``, ``tokenizer_config.json``, ...): the files that say what a pipeline
    is. Weights, vocabularies and weight index files are not configs."""
    files = [folder / "model_index.json"]
    for name in _component_names(_read_model_index(folder)):
        sub = folder / name
        if sub.is_dir():
            files.extend(sorted(p for p in sub.iterdir() if p.is_file() and p.name.endswith("config.json")))
    return files


def folder_identity(path: str | os.PathLike[str]) -> str:
    """The identity of a pipeline folder: sha256 over its ``model_index.json`` and every
    component's config JSON (not weights), each canonicalized (sorted keys, provenance keys such
    as ``_diffusers_version`` dropped) and named by its path inside the folder. The same pipeline
    copied, moved or re-saved keeps its identity; another architecture, scheduler config or
    component set gets another one. A file that is not JSON is hashed as bytes."""
    folder = Path(path).expanduser()
    digest = hashlib.sha256()
    for file in _config_files(folder):
        raw = file.read_bytes()
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            canonical = raw
        else:
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in _PROVENANCE_KEYS}
            canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        rel = file.relative_to(folder).as_posix().encode()
        digest.update(len(rel).to_bytes(8, "big") + rel + len(canonical).to_bytes(8, "big") + canonical)
    return digest.hexdigest()


def weights_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the weights one load of the pipeline folder reads (file sizes; symlinks of an HF
    cache followed): per component, its unsuffixed weight files (``*.fp16.*`` variants only
    where there is nothing else), safetensors preferred over other formats as diffusers does."""
    folder = Path(path).expanduser()
    total = 0
    for name in _component_names(_read_model_index(folder)):
        sub = folder / name
        if not sub.is_dir():
            continue
        files = [p for p in sub.rglob("*") if p.name.endswith(_WEIGHT_SUFFIXES) and p.is_file()]
        chosen = [p for p in files if p.suffix == ".safetensors"] or files
        plain = [p for p in chosen if "." not in p.name[: -len(p.suffix)]]
        total += sum(p.stat().st_size for p in (plain or chosen))
    return total


def is_flow_matching(scheduler: Any) -> bool:
    """Whether ``scheduler`` drives a flow-matching model (SD3, Flux) rather than an epsilon/v one."""
    config = scheduler.config
    return (
        "FlowMatch" in type(scheduler).__name__
        or bool(config.get("use_flow_sigmas", False))
        or config.get("prediction_type") == "flow_prediction"
    )


# Scheduler classes that can drive each model family (DPM-Solver++ 2M does both, with flow sigmas for flow models).
_FAMILY_SCHEDULERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "flow": ("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler"),
        "diffusion": ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler"),
    }
)


def swappable_schedulers(pipe: Any) -> tuple[str, ...]:
    """The scheduler classes :func:`set_scheduler` puts into ``pipe`` (its family's: flow-matching or
    diffusion, from its current scheduler); ``exec`` switches to the one a schedule names."""
    return _FAMILY_SCHEDULERS["flow" if is_flow_matching(pipe.scheduler) else "diffusion"]


def set_scheduler(pipe: Any, scheduler: str) -> Any:
    """Swap ``pipe.scheduler`` for ``scheduler`` (a class name in SCHEDULER_NAMES) built from its config.

    The new scheduler keeps the old one's config (betas, timestep spacing, shift, ...; keys the new
    class does not take are dropped). DPMSolverMultistepScheduler is pinned to deterministic
    DPM-Solver++ 2M; on a flow-matching pipeline it uses flow sigmas with the old ``shift``.
    A scheduler of the other family (e.g. DDIM on SD3, flow-match Euler on SDXL) is refused: it
    would run but produce noise. Returns ``pipe``.
    """
    if scheduler not in _SCHEDULER_OVERRIDES:
        raise UserError(f"unsupported scheduler '{scheduler}': choose one of {', '.join(SCHEDULER_NAMES)}")
    import inspect

    import diffusers

    family = "flow" if is_flow_matching(pipe.scheduler) else "diffusion"
    allowed = swappable_schedulers(pipe)
    if scheduler not in allowed:
        raise UserError(
            f"scheduler {scheduler} cannot drive {type(pipe).__name__} (a {family} model with {type(pipe.scheduler).__name__}); "
            f"choose one of {', '.join(allowed)}"
        )
    cls = getattr(diffusers, scheduler)
    overrides = dict(_SCHEDULER_OVERRIDES[scheduler])
    if family == "flow" and scheduler == "DPMSolverMultistepScheduler" and "FlowMatch" in type(pipe.scheduler).__name__:
        overrides.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=float(pipe.scheduler.config.get("shift", 1.0)))
    if scheduler == "FlowMatchEulerDiscreteScheduler" and "flow_shift" in pipe.scheduler.config:
        overrides["shift"] = float(pipe.scheduler.config["flow_shift"])  # back from flow DPM-Solver++
    accepted = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in pipe.scheduler.config.items() if k in accepted}
    pipe.scheduler = cls.from_config({**config, **overrides})
    return pipe
