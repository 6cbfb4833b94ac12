"""The layout's rules: imports follow the layer order, and no module imports one that imports it back.

Layers, lowest first (a module may import from its own layer and the ones below it):

    errors, testing  <  runtime  <  config  <  data  <  models  <  dpo  <  judges  <  eval  <  spa  <  interface

``interface`` is the package's public face: ``spreadpref`` itself, the CLI, ``envinfo`` and the old
module paths (``_moved``). See docs/architecture.md.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

import spreadpref
from spreadpref.runtime import layout

PACKAGE = Path(spreadpref.__file__).parent
ORDER = ["base", "runtime", "config", "data", "models", "dpo", "judges", "eval", "spa", "interface"]
LAYER_OF = {
    "spreadpref.errors": "base",
    "spreadpref.testing": "base",
    "spreadpref.runtime": "runtime",
    "spreadpref.config": "config",
    "spreadpref.data": "data",
    "spreadpref.resources": "data",
    "spreadpref.models": "models",
    "spreadpref.dpo": "dpo",
    "spreadpref.judges": "judges",
    "spreadpref.eval": "eval",
    "spreadpref.spa": "spa",
    "spreadpref": "interface",
    "spreadpref.cli": "interface",
    "spreadpref.__main__": "interface",
    "spreadpref.envinfo": "interface",
    "spreadpref.sandbox": "interface",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a module: that of its longest listed prefix."""
    candidates = [name for name in LAYER_OF if module == name or module.startswith(name + ".")]
    if not candidates:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYER_OF and to docs/architecture.md")
    return LAYER_OF[max(candidates, key=len)]


def imported_modules(module: str) -> set[str]:
    """Every spreadpref module that ``module`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` imports the submodule.
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def upward_imports(module: str, graph: dict[str, set[str]]) -> list[str]:
    mine = ORDER.index(layer(module))
    return sorted(other for other in graph[module] if ORDER.index(layer(other)) > mine)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layer_order(module):
    upward = upward_imports(module, GRAPH)
    assert not upward, f"{module} ({layer(module)}) imports a higher layer: {upward}"


def test_the_layer_check_sees_an_upward_import():
    graph = {"spreadpref.data.loading": {"spreadpref.spa.loop", "spreadpref.config"}}
    assert upward_imports("spreadpref.data.loading", graph) == ["spreadpref.spa.loop"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph.get(module, ())):
            if other == "spreadpref" or module.startswith(other + "."):
                continue  # a module's own package __init__ runs first by the import system, not by this module
            if state.get(other) == "open":
                raise CycleFound(stack[stack.index(other) :] + [other])
            if other not in state:
                visit(other)
        stack.pop()
        state[module] = "done"

    try:
        for module in sorted(graph):
            if module not in state:
                visit(module)
    except CycleFound as found:
        return found.cycle
    return None


class CycleFound(Exception):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_a_cycle():
    graph = {"spreadpref.spa.judge": {"spreadpref.judges.base"}, "spreadpref.judges.base": {"spreadpref.spa.judge"}}
    assert find_cycle(graph) == ["spreadpref.judges.base", "spreadpref.spa.judge", "spreadpref.judges.base"]


def test_the_readme_advertises_modules_that_exist():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    for name in sorted(set(re.findall(r"`(spreadpref(?:\.[a-z_]+)+)\.[A-Za-z_]+`", readme))):
        assert name in MODULES, f"the README names {name}, which is not a module"


def test_the_api_page_is_generated_from_the_current_docstrings():
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "api_docs.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- one home for the run directory's layout ---------------------------------------------------


def layout_spellings(source: str) -> list[str]:
    """String constants of ``source`` that spell a run-directory name: a layout file name, or ``round-<i>``."""
    names = {value for key, value in vars(layout).items() if key.endswith("_FILE")}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in names or re.fullmatch(r"round-\d+(/.*)?", node.value):
                found.append(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("round-"):
                found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"spreadpref.runtime.layout"}))
def test_the_run_directory_is_spelled_only_in_the_layout_module(module):
    spelled = layout_spellings(MODULES[module].read_text(encoding="utf-8"))
    assert not spelled, f"{module} spells run-directory names itself; use spreadpref.runtime.layout: {spelled}"


def test_the_layout_check_sees_a_spelled_name():
    source = 'path = root / "summary.json"\nother = root / f"round-{i}" / "x"\nstage = "round-2/train"\n'
    assert sorted(layout_spellings(source)) == ["f'round-{i}'", "round-2/train", "summary.json"]
    assert layout_spellings('message = "see summary.json"\nname = round_name(i)\n') == []


# --- tests mirror the package ----------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
DATA_ONLY = {"configs", "resources"}  # shipped files, no code of their own


def test_every_subpackage_has_its_test_folder():
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name not in DATA_ONLY)
    missing = [name for name in subpackages if not any((TESTS / name).glob("test_*.py"))]
    assert not missing, f"subpackages without a tests/<name>/ folder of tests: {missing}"


def test_test_files_import_helpers_not_each_other():
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        siblings = sorted(m for m in imported if m.split(".")[0].startswith("test_") or m == "conftest")
        assert not siblings, f"{path.relative_to(TESTS)} imports {siblings}; shared code goes in helpers.py"


ONE_HOME = ("load_config", "TrainResult", "round_directory", "implicit_score", "log_ratio", "seeded_split")


@pytest.mark.parametrize("name", ONE_HOME)
def test_each_shared_fact_is_defined_once(name):
    homes = [
        module
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name
    ]
    assert len(homes) == 1, f"{name} is defined in {homes}; keep one and import it"


def test_the_length_normalisation_has_one_reader():
    """judge.length_normalize is read where the implicit score is computed, and nowhere else."""
    readers = [
        module
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr == "length_normalize"
    ]
    assert readers == ["spreadpref.judges.implicit"], readers
