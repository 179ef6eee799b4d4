"""DESIGN §6 as tests: every import points down the stage DAG (contracts <- planner, executor <-
profiler <- cli), planner and executor never import each other, and the contracts import neither
torch nor ortools (so `parastep validate` and `simulate` start fast anywhere)."""

import ast
import subprocess
import sys
from pathlib import Path

import parastep

ROOT = Path(parastep.__file__).resolve().parent


def _imports(package: str) -> set[str]:
    """Every module name imported (absolute, or relative resolved to parastep.*) by a package's files."""
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ["parastep", *path.relative_to(ROOT).parent.parts]
                    base = base[: len(base) - (node.level - 1)]
                    names.add(".".join(base + ([node.module] if node.module else [])))
                else:
                    names.add(node.module or "")
    return names


def test_planner_and_executor_never_import_each_other():
    assert not {n for n in _imports("planner") if n.startswith("parastep.executor")}
    assert not {n for n in _imports("executor") if n.startswith("parastep.planner")}


def test_contracts_import_neither_torch_nor_ortools():
    code = ("import sys; import parastep.schedules, parastep.schedules.simulate, parastep.schedules.command, "
            "parastep.profiles, parastep.profiles.interconnects, parastep.profiles.priors, parastep.cli; "
            "print(sorted(m for m in ('torch', 'ortools', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# Which parastep packages each package may import (DESIGN §6). The contracts (schedules, profiles)
# are one layer: the schedule's simulator prices with the profile's cost primitives. ``errors`` and
# ``outputs`` (output paths checked before work) are leaf modules with no heavy imports.
ALLOWED = {
    "schedules": {"errors", "outputs", "schedules", "profiles"},
    "profiles": {"errors", "profiles", "schedules"},
    "models": {"errors", "models"},
    "planner": {"errors", "schedules", "profiles", "planner"},
    "executor": {"errors", "outputs", "schedules", "profiles", "models", "executor"},
    "profiler": {"errors", "outputs", "schedules", "profiles", "models", "planner", "executor", "profiler"},
}


def test_every_import_points_down_the_stage_dag():
    bad = {}
    for package, allowed in ALLOWED.items():
        used = {n.split(".")[1] for n in _imports(package) if n.startswith("parastep.") and n.count(".") >= 1}
        if used - allowed:
            bad[package] = sorted(used - allowed)
    assert bad == {}, f"imports against DESIGN §6: {bad}"


def test_every_package_is_placed_in_the_dag():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "benchmarks")}
    assert packages == set(ALLOWED)
