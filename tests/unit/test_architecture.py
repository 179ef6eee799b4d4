"""docs/design.md §6 as tests: every import points down the stage DAG (leaves <- profiles <- schedules
<- planner, executor <- profiler <- cli), planner and executor never import each other, the contracts
import neither torch nor ortools (so `parastep validate` and `simulate` start fast anywhere), no two
files import each other even through others, and only `cli.py` imports a command module."""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

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


# Which parastep packages each package may import (docs/design.md §6). The schedule contract sits on
# the profile contract (the simulator prices with the profile's cost primitives), never the other way
# round. ``errors``, ``outputs`` (output paths checked before work) and ``yamlio`` (the one YAML reader
# and the one-line validation error) are leaf modules with no heavy imports (``LEAVES``).
ALLOWED = {
    "schedules": {"errors", "outputs", "yamlio", "schedules", "profiles"},
    "profiles": {"errors", "yamlio", "profiles"},
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
    assert bad == {}, f"imports against docs/design.md §6: {bad}"


def test_every_package_is_placed_in_the_dag():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "benchmarks")}
    assert packages == set(ALLOWED)


# ---- the file-level import graph ---------------------------------------------------------------------

def _package_modules() -> dict[str, Path]:
    """Every module of the package (``parastep.cli``, ``parastep.executor.inputs``, ...) -> its file:
    the root's files and those of every folder with an ``__init__.py`` below it (not tests, not
    benchmarks, not a virtual environment)."""
    modules: dict[str, Path] = {}

    def walk(folder: Path, name: str) -> None:
        for path in sorted(folder.glob("*.py")):
            modules[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path
        for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
            walk(sub, f"{name}.{sub.name}")

    walk(ROOT, "parastep")
    return modules


def _imported_modules(module: str, path: Path, known) -> set[str]:
    """The parastep modules ``path`` (module ``module``) imports, anywhere in it (inside functions
    too), relative imports resolved: ``from .x import y`` is module ``x.y`` where that is a module,
    else ``x``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return {name for name in found if name in known and name != module}


def _import_graph() -> nx.DiGraph:
    modules = _package_modules()
    graph = nx.DiGraph()
    for module, path in modules.items():
        graph.add_node(module)
        graph.add_edges_from((module, target) for target in _imported_modules(module, path, modules))
    return graph


def test_the_import_graph_sees_every_kind_of_import():
    """The graph itself: a relative import inside a function, a ``from package import module`` and a
    module-level absolute import each give an edge."""
    graph = _import_graph()
    assert graph.has_edge("parastep.schedules.simulate", "parastep.profiles.io")          # inside a function
    assert graph.has_edge("parastep.executor.command", "parastep.executor.inputs")        # from .inputs import ...
    assert graph.has_edge("parastep.schedules.io", "parastep.yamlio")                     # from ..yamlio import ...
    assert len(graph) > 40


def test_no_import_cycle_between_files():
    """No file imports itself through others (not even lazily, inside a function): a cycle is a
    layer that is not one, and the first import of either file depends on which one came first."""
    cycles = sorted(nx.simple_cycles(_import_graph()), key=lambda c: (len(c), c))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def _is_command(module: str) -> bool:
    return "command" in module.rsplit(".", 1)[-1]


def test_only_cli_imports_command_modules():
    """A command module (``*command*.py``) is arguments -> library calls -> output; ``cli.py`` loads it
    from its table, and nothing else (no other module, no benchmark script) imports it: what two
    callers need lives in a library module."""
    modules = _package_modules()
    users = {module: path for module, path in modules.items() if module != "parastep.cli"}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        users[f"benchmarks.{path.stem}"] = path
    bad = {module: sorted(t for t in _imported_modules(module, path, modules) if _is_command(t))
           for module, path in users.items()}
    bad = {module: targets for module, targets in bad.items() if targets}
    assert bad == {}, f"command modules imported outside cli.py: {bad}"


def test_cli_table_names_existing_command_modules():
    from parastep.cli import COMMANDS

    modules = _package_modules()
    assert all(name in modules and _is_command(name) for name in COMMANDS.values())


# the root's leaf modules and the parastep modules each may import
LEAVES = {"parastep.errors": set(), "parastep.outputs": {"parastep.errors"}, "parastep.yamlio": {"parastep.errors"}}


def test_leaf_modules_import_only_leaves():
    graph = _import_graph()
    root = {m for m in graph if m.count(".") == 1 and not (ROOT / m.split(".")[1]).is_dir()}
    assert root - {"parastep.cli"} == set(LEAVES), "a module at the root is a leaf (LEAVES) or the CLI"
    assert {m: set(graph.successors(m)) for m in LEAVES} == LEAVES


def test_every_test_file_is_in_a_tier():
    """tests/unit (fast, pure logic), tests/integration (ranks, the command line, pipelines),
    tests/acceptance (held-out quality): a test file outside them would run in no tier of its own."""
    tests = Path(__file__).resolve().parents[1]
    loose = sorted(p.name for p in tests.glob("test_*.py"))
    tiers = {p.parent.name for p in tests.rglob("test_*.py")}
    assert loose == [] and tiers == {"unit", "integration", "acceptance"}, (loose, tiers)
