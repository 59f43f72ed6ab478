"""The import layering: the four packages stack (search_spaces <- kernels <- latency_model <- nas, nothing imports
upward), no two modules of any package import each other in a cycle, and neither do the wings of ``nas/`` (cli,
search, training and its top-level modules). Imports inside functions and under TYPE_CHECKING count: they are edges
all the same."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("search_spaces", "kernels", "latency_model", "nas")  # each may import those before it only


def imports(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from p import x`` counts as p.x where that is a module, else p)."""
    files = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
             for package in LAYERS if (root / package).is_dir() for f in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level \
                    else node.module or ""
                base = base.rstrip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if rank[t.split(".")[0]] > rank[m.split(".")[0]])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def nas_graphs(graph: dict[str, set[str]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(modules, wings) of ``nas``: edges into the ``nas`` package itself are left out (``from .. import x`` names
    the module x)."""
    def wing(module: str) -> str:
        return ".".join(module.split(".")[:2])

    modules = {m: {t for t in ts if t.startswith("nas.") and not t.startswith(f"{m}.")}
               for m, ts in graph.items() if m.startswith("nas.")}
    # a package's own __init__ re-exporting its submodules is no cycle
    modules = {m: {t for t in ts if not m.startswith(f"{t}.")} for m, ts in modules.items()}
    wings: dict[str, set[str]] = defaultdict(set)
    for m, targets in modules.items():
        wings[wing(m)] |= {wing(t) for t in targets if wing(t) != wing(m)}
    return modules, wings


def package_graph(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The imports between the modules of one package (a package's ``__init__`` re-exporting its own submodules, and
    a submodule importing its package's ``__init__``, are both edges: a cycle through an ``__init__`` is one too)."""
    return {m: {t for t in ts if t.split(".")[0] == package} for m, ts in graph.items() if m.split(".")[0] == package}


def test_no_package_has_a_cycle_between_its_modules():
    graph = imports(ROOT)
    found = {package: cycles(package_graph(graph, package)) for package in LAYERS}
    assert found == {package: [] for package in LAYERS}


def test_no_package_imports_upward_and_nas_has_no_cycles():
    graph = imports(ROOT)
    assert {m.split(".")[0] for m in graph} == set(LAYERS)
    assert upward(graph) == []
    modules, wings = nas_graphs(graph)
    assert {"nas.cli", "nas.search", "nas.training"} <= set(wings)
    assert cycles(wings) == []
    assert cycles(modules) == []


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    """The checks above on a tree made to break both rules: they would fail the suite."""
    files = {"search_spaces/__init__.py": "", "search_spaces/space.py": "def f():\n    from kernels import runtime\n",
             "kernels/__init__.py": "", "kernels/runtime.py": "import search_spaces.space\n",
             "latency_model/__init__.py": "", "nas/__init__.py": "",
             "nas/search/__init__.py": "", "nas/search/driver.py": "from ..training import trainer\n",
             "nas/training/__init__.py": "",
             "nas/training/trainer.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from ..search.driver import X\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = imports(tmp_path)
    assert upward(graph) == ["search_spaces.space -> kernels.runtime"]
    modules, wings = nas_graphs(graph)
    assert cycles(wings) == [["nas.search", "nas.training"]]
    assert cycles(modules) == [["nas.search.driver", "nas.training.trainer"]]


def test_the_check_finds_a_cycle_inside_a_package_hidden_in_a_function(tmp_path):
    """A package's modules importing each other, one of the imports inside a function, or through the package's
    ``__init__``: both are cycles the check above reports."""
    files = {"search_spaces/__init__.py": "", "search_spaces/config.py": "from . import registry\n",
             "search_spaces/registry.py": "def f():\n    from .config import BlockConfig\n",
             "search_spaces/families/__init__.py": "from . import vit\n",
             "search_spaces/families/vit.py": "from . import Family\n",
             "kernels/__init__.py": "", "latency_model/__init__.py": "", "nas/__init__.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = cycles(package_graph(imports(tmp_path), "search_spaces"))
    assert sorted(found) == [["search_spaces.config", "search_spaces.registry"],
                             ["search_spaces.families", "search_spaces.families.vit"]]


HEAVY = ("tvm", "tvm_ffi", "ray", "optuna_dashboard", "matplotlib", "sklearn", "scipy")
# where a heavy library is imported by an import statement, and why (everywhere else: kernels.lazy.lazy_import)
HEAVY_IMPORTS_ALLOWED = {
    "nas/search/ray_backend.py": "its classes extend Ray's; loaded only when the ray backend is chosen",
    "kernels/tvm_import.py": "the tensor intrinsics, imported inside the fast inspect.stack it installs",
}


def import_rule_breaches(root: Path) -> list[str]:
    """``path:line what``, for each import of a project module inside a function (project modules are imported at
    the top of a module) and each import statement of a heavy optional library outside :data:`HEAVY_IMPORTS_ALLOWED`
    (those go through ``kernels.lazy.lazy_import``)."""
    found = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(), relative)
            in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." if node.level else node.module or ""]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if id(node) in in_functions and (name == "." or top in LAYERS):
                        found.append(f"{relative}:{node.lineno} {name} inside a function")
                    elif top in HEAVY and relative not in HEAVY_IMPORTS_ALLOWED:
                        found.append(f"{relative}:{node.lineno} {name} imported, not through lazy_import")
    return found


def test_project_modules_at_module_top_and_heavy_libraries_through_the_lazy_helper():
    assert import_rule_breaches(ROOT) == []
    assert all((ROOT / path).is_file() for path in HEAVY_IMPORTS_ALLOWED)


def test_the_import_rule_check_finds_both_breaches(tmp_path):
    files = {"search_spaces/__init__.py": "", "kernels/__init__.py": "", "latency_model/__init__.py": "",
             "nas/__init__.py": "def f():\n    from . import pipeline\n    import json\n",
             "nas/pipeline.py": "import tvm\nfrom kernels.lazy import lazy_import\nplt = lazy_import('matplotlib')\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_rule_breaches(tmp_path) == ["nas/__init__.py:2 . inside a function",
                                              "nas/pipeline.py:1 tvm imported, not through lazy_import"]


def test_a_lazy_module_imports_on_first_use_and_names_what_is_missing():
    """In a fresh interpreter: binding costs nothing, the first attribute read imports, and a library that cannot be
    imported is one ImportError saying how to install it."""
    import subprocess
    import sys

    code = """
import sys
from kernels.lazy import lazy_import
optimize = lazy_import("scipy.optimize")
assert "scipy" not in sys.modules, "bound, not imported"
assert optimize.nnls([[1.0]], [2.0])[0][0] == 2.0 and "scipy.optimize" in sys.modules
try:
    lazy_import("matplotlib.no_such_module").anything
except ImportError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "cannot import matplotlib.no_such_module" in out.stdout and "make install" in out.stdout
    from kernels.lazy import lazy_import
    try:
        lazy_import("json")
    except ValueError as e:
        assert "heavy optional libraries" in str(e)
    else:
        raise AssertionError("lazy_import accepted a library outside its list")
