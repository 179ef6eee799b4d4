"""Profile YAML I/O and the registry of shipped profiles (model name -> file in this folder)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ..errors import MalformedInput, UserError
from ..yamlio import dump_yaml, first_error, read_yaml_file
from .model import Profile, profile_sha256

SHIPPED_DIR = Path(__file__).resolve().parent
REMAKE = "re-run 'parastep profile'"


def shipped_profiles() -> dict[str, Path]:
    """Registry: model name -> shipped profile file (``profiles/<model>.yaml``)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def load_profile(path: str | Path) -> tuple[Profile, str]:
    """(profile, sha256 of the file's text). Any problem is a one-line UserError: ``InputPathError``
    for a path that cannot be read, ``MalformedInput`` for content (``parastep.yamlio`` reads it)."""
    data, text = read_yaml_file(path, what="profile", fix=REMAKE)
    version = data.get("parastep_profile")
    if type(version) is not int or version != 1:  # noqa: E721 - True == 1 must not pass
        raise MalformedInput(f"profile file '{path}' is not a parastep profile (no 'parastep_profile: 1'); {REMAKE}")
    try:
        return Profile.model_validate(data), profile_sha256(text)
    except ValidationError as exc:
        raise MalformedInput(f"profile file '{path}': {first_error(exc)}; {REMAKE}") from None


def resolve_profile(model: str | None, profile_path: str | Path | None = None) -> tuple[Profile, str]:
    """The profile to plan with: ``profile_path`` if given (checked against ``model`` when both are
    given), else the shipped one for ``model``."""
    if profile_path is not None:
        prof, sha = load_profile(profile_path)
        if model is not None and prof.model != model:
            raise UserError(f"profile '{profile_path}' is for model '{prof.model}', not '{model}'; pass --model {prof.model} or another --profile")
        return prof, sha
    shipped = shipped_profiles()
    if model not in shipped:
        raise UserError(f"no shipped profile for model '{model}' (shipped: {', '.join(shipped) or 'none'}); pass --profile FILE made with 'parastep profile --model {model} --out FILE'")
    return load_profile(shipped[model])


def dump_profile(profile: Profile) -> str:
    return dump_yaml(profile.model_dump(mode="json", exclude_none=True), sort_keys=False, default_flow_style=None, width=200)


def write_profile(profile: Profile, path: str | Path) -> None:
    """Write atomically: a crash never leaves a half-written profile behind."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_text(dump_profile(profile), encoding="utf-8")
        tmp.replace(p)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(f"cannot write the profile to '{p}': {exc.strerror or exc}; pass a writable --out path") from None
