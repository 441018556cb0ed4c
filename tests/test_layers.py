"""The layer order of ``anogen``, read from the source (docs/architecture.md, "Floors").

Every module sits on a floor (``FLOORS``, by package prefix: a new module of a package falls
in place). No import, at the head of a module or inside a function, runs up a floor, and the
module-level imports have no circle. A project import inside a function needs a reason the
test can check: its target loads a heavy library (``HEAVY``) at import time, which the light
paths (planning, the light jobs, the command line) must not load; and those paths load no torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# floor: (name, module prefixes); a module's floor is that of its longest matching prefix.
FLOORS = {
    0: (
        "base",
        (
            "anogen",  # the package itself: only anogen/__init__.py (see floor_of)
            "anogen.errors",
            "anogen.keys",
            "anogen.io",
            "anogen.config",
            "anogen.options",
            "anogen.devices",
            "anogen.provenance",
            "anogen.checkpoint",
            "anogen.resumable",
            "anogen.progress",
            "anogen.plots",
            "anogen.artifacts",
            "anogen.authors",
        ),
    ),
    1: ("data", ("anogen.data",)),
    2: ("diffusion", ("anogen.diffusion",)),
    3: ("stages", ("anogen.embedding", "anogen.generation", "anogen.detectors", "anogen.evaluation", "anogen.quality")),
    4: ("plan", ("anogen.plan", "anogen.plan_stages", "anogen.studies", "anogen.estimate", "anogen.artifact_sizes")),
    5: ("entry points", ("anogen.jobs", "anogen.commands", "anogen.cli")),
}

# Third-party libraries that take seconds or a GPU stack to import: a light path must not load them.
HEAVY = (
    "torch",
    "torchvision",
    "torch_fidelity",
    "diffusers",
    "transformers",
    "cv2",
    "timm",
    "lpips",
    "safetensors.torch",
)

# The light paths: planning, the command line, and the modules of the light jobs (the workflow
# scripts demo_data, select_support, summarize, study_table, quality_table, export_generated).
LIGHT = (
    "anogen.plan",
    "anogen.studies.planner",
    "anogen.cli",
    "anogen.jobs",
    "anogen.data.demo",
    "anogen.data.support",
    "anogen.evaluation.summary",
    "anogen.evaluation.report",
    "anogen.studies.table",
    "anogen.quality.table",
    "anogen.generation.export",
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported anogen module
    line: int
    local: bool  # inside a function
    file: str  # the importing file, relative to the checkout

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "anogen").rglob("*.py"))}


def floor_of(module: str) -> int | None:
    """The floor of the longest prefix in FLOORS; the bare ``anogen`` prefix matches only itself."""
    best, length = None, -1
    for floor, (_, prefixes) in FLOORS.items():
        for prefix in prefixes:
            hit = module == prefix or (prefix != "anogen" and module.startswith(prefix + "."))
            if hit and len(prefix) > length:
                best, length = floor, len(prefix)
    return best


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _imported(node: ast.Import | ast.ImportFrom, package: str, known) -> list[str]:
    """The modules an import statement loads: ``from a import b`` is ``a.b`` when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing package
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return subs if len(subs) == len(node.names) else [base, *subs]


def scan(source: str, name: str, is_package: bool, known) -> tuple[list[tuple[str, int, bool]], list[str]]:
    """(imported module, line, inside a function) of every import that runs (``TYPE_CHECKING``
    blocks do not), and the heavy libraries imported at module level."""
    found: list[tuple[str, int, bool]] = []
    package = name if is_package else name.rpartition(".")[0]

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for sub in child.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]), local)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend((target, child.lineno, local) for target in _imported(child, package, known))
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, inner)

    visit(ast.parse(source), False)
    heavy = [t for t, _, local in found if not local and any(t == h or t.startswith(h + ".") for h in HEAVY)]
    return found, heavy


@dataclass
class Graph:
    imports: list[Import]  # project imports only
    heavy: dict[str, list[str]]  # module -> heavy libraries it imports at module level

    def top_level(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {m: set() for m in self.heavy}
        for imp in self.imports:
            if not imp.local:
                edges[imp.source].add(imp.target)
        return edges

    def loads_heavy(self, module: str, seen: set[str] | None = None) -> bool:
        """Whether importing ``module`` imports a HEAVY library: itself, its parent packages (run
        first by Python) or any project module they import at module level."""
        seen = set() if seen is None else seen
        if module in seen:
            return False
        seen.add(module)
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        if self.heavy.get(module):
            return True
        return any(self.loads_heavy(m, seen) for m in [*parents, *self.top_level().get(module, ())])


def build_graph(mods: dict[str, Path], root: Path = ROOT) -> Graph:
    imports, heavy = [], {}
    for name, path in mods.items():
        found, heavy[name] = scan(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", mods)
        file = str(path.relative_to(root))
        imports += [Import(name, t, line, local, file) for t, line, local in found if t in mods]
    return Graph(imports, heavy)


def upward(graph: Graph) -> list[str]:
    return [
        f"{imp.where()}: {imp.source} (floor {floor_of(imp.source)}) imports {imp.target} "
        f"(floor {floor_of(imp.target)})"
        for imp in graph.imports
        if floor_of(imp.target) > floor_of(imp.source)
    ]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def unjustified_local(graph: Graph) -> list[str]:
    return [
        f"{imp.where()}: {imp.source} imports {imp.target} inside a function, which loads none of {HEAVY}: "
        "import it at the module's head"
        for imp in graph.imports
        if imp.local and not graph.loads_heavy(imp.target)
    ]


MODULES = modules()
GRAPH = build_graph(MODULES)


# ----------------------------------------------------------------------------- the package


def test_every_module_has_a_floor():
    assert [m for m in MODULES if floor_of(m) is None] == []


def test_no_import_runs_up_a_floor():
    assert upward(GRAPH) == []


def test_no_circle_among_module_level_imports():
    assert circles(GRAPH.top_level()) == []


def test_a_function_local_import_loads_a_heavy_library():
    assert unjustified_local(GRAPH) == []


@pytest.mark.parametrize("module", LIGHT)
def test_the_light_paths_load_no_torch(module):
    code = f"import sys, {module}; print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    run = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "torch" not in json.loads(run.stdout), f"importing {module} loads {run.stdout}"


# ----------------------------------------------------------------------------- the checks can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return modules(tmp_path)


def test_the_checks_find_an_upward_import_a_circle_and_a_needless_local_import(tmp_path):
    mods = _tree(
        tmp_path,
        {
            "anogen/__init__.py": "",
            "anogen/data/__init__.py": "",
            "anogen/data/a.py": "from anogen.plan import Plan\n",  # floor 1 -> 4
            "anogen/plan.py": "import anogen.studies.b\n",
            "anogen/studies/__init__.py": "",
            "anogen/studies/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from anogen.jobs import x\n"
                "from anogen import plan\n"  # plan <-> studies.b: a circle
                "def f():\n    from anogen.data import a\n    from anogen.detectors import net\n"
            ),
            "anogen/jobs.py": "",
            "anogen/detectors/__init__.py": "",
            "anogen/detectors/net.py": "import torch\n",
        },
    )
    graph = build_graph(mods, tmp_path)
    assert {(i.source, i.target, i.line, i.local) for i in graph.imports} == {
        ("anogen.data.a", "anogen.plan", 1, False),
        ("anogen.plan", "anogen.studies.b", 1, False),
        ("anogen.studies.b", "anogen.plan", 4, False),
        ("anogen.studies.b", "anogen.data.a", 6, True),
        ("anogen.studies.b", "anogen.detectors.net", 7, True),
    }
    assert [line.split(": ", 1)[1] for line in upward(graph)] == [
        "anogen.data.a (floor 1) imports anogen.plan (floor 4)"
    ]
    assert circles(graph.top_level()) == [["anogen.plan", "anogen.studies.b"]]
    assert graph.loads_heavy("anogen.detectors.net") and not graph.loads_heavy("anogen.data.a")
    assert [line.split(": ", 1)[1].split(" inside")[0] for line in unjustified_local(graph)] == [
        "anogen.studies.b imports anogen.data.a"
    ]


@pytest.mark.parametrize(
    ("module", "floor"),
    [("anogen", 0), ("anogen.errors", 0), ("anogen.data.layouts.visa", 1), ("anogen.embedding.trainer", 3)],
)
def test_a_new_module_falls_in_its_package_floor(module, floor):
    assert floor_of(module) == floor
    assert floor_of("anogen.newthing") is None
