"""What a profile's provenance says about the machine it was measured on (docs/design.md §2)."""

from __future__ import annotations

import os
import platform

from .instrument import load_torch


def device_description(pipe, threads: int) -> str:
    """The device the pipeline runs on: the CUDA device's name, or the CPU and its threads per rank."""
    torch = load_torch()
    dev = str(getattr(pipe, "device", "cpu"))
    if dev.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(dev))
    proc = platform.processor() or platform.machine()
    return f"cpu: {os.cpu_count()} cores ({proc}), {threads} thread(s) per rank"


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a measurement depends on (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("parastep", "torch", "diffusers", "transformers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def load_average() -> str:
    """The machine's load average in words (timings on a shared machine say under what load they ran)."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"
