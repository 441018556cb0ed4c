"""One source of truth: config defaults live in the schema only (issue 16).

The package reads every config value from a spec the schema has filled, so a literal copy of a
schema default anywhere in ``anogen/`` is a second source that can drift from it. This scans
the package's syntax tree for the three ways such a copy is written:

- ``spec.get("tau", 0.9)`` (or ``_get(spec, "tau", 0.9)``): a fallback for a key the schema fills;
- ``def f(..., checkpoint_every=500)``: a parameter named like a config key, defaulting to its
  schema default;
- ``{"epochs": 700}``: a dict literal repeating a schema default under its key.

A repetition kept on purpose (a value that only shares a name with a config key, say) carries
the comment ``# repeated on purpose: <why>`` on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "anogen"
MARKER = "# repeated on purpose"


def schema_defaults() -> dict[str, set[str]]:
    """Config key name -> reprs of the scalar defaults the schema gives keys of that name."""
    schema = yaml.safe_load((PACKAGE / "config.schema.yaml").read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {}

    def walk(node) -> None:
        if not isinstance(node, dict):
            return
        for name, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict):
                default = sub.get("default")
                if isinstance(default, (bool, int, float, str)):
                    found.setdefault(name, set()).add(repr(default))
                walk(sub)
        for key in ("additionalProperties", "items"):
            walk(node.get(key))
        for key in ("oneOf", "anyOf", "allOf"):
            for alternative in node.get(key) or []:
                walk(alternative)
        for sub in (node.get("$defs") or {}).values():
            walk(sub)

    walk(schema)
    return found


def _function_defaults(node: ast.FunctionDef | ast.AsyncFunctionDef):
    args = node.args
    positional = args.posonlyargs + args.args
    yield from zip(positional[len(positional) - len(args.defaults) :], args.defaults)
    yield from ((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)


def copies_of_schema_defaults(path: Path, defaults: dict[str, set[str]]) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    where = path.relative_to(REPO)
    out: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        if MARKER not in lines[node.lineno - 1]:
            out.append(f"{where}:{node.lineno}: {what}")

    def is_copy(name, value: ast.AST) -> bool:
        return isinstance(value, ast.Constant) and repr(value.value) in defaults.get(name, ())

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if name == "get" and len(args) == 2 and isinstance(args[0], ast.Constant) and args[0].value in defaults:
                report(node, f"fallback .get({args[0].value!r}, {ast.unparse(args[1])}) for a key the schema fills")
            if name == "_get" and len(args) == 3 and isinstance(args[1], ast.Constant) and args[1].value in defaults:
                report(node, f"fallback _get(..., {args[1].value!r}, {ast.unparse(args[2])})")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg, default in _function_defaults(node):
                if is_copy(arg.arg, default):
                    report(default, f"{node.name}({arg.arg}={ast.unparse(default)}) repeats the schema default")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and is_copy(key.value, value):
                    report(value, f"{{{key.value!r}: {ast.unparse(value)}}} repeats the schema default")
    return out


def test_scan_finds_a_copied_default(tmp_path):
    """The scan itself: each written form is found, the marker exempts a line."""
    sample = PACKAGE / "_scan_sample.py"
    sample.write_text(
        "def f(spec, checkpoint_every=500):\n"
        "    a = spec.get('tau', 0.9)\n"
        "    b = {'epochs': 700}\n"
        "    c = {'epochs': 700}  # repeated on purpose: test\n"
        "    return a, b, c\n",
        encoding="utf-8",
    )
    try:
        found = copies_of_schema_defaults(sample, schema_defaults())
    finally:
        sample.unlink()
    assert len(found) == 3, found
    assert any("checkpoint_every=500" in f for f in found)
    assert any(".get('tau', 0.9)" in f for f in found)


def test_no_schema_default_is_copied_into_the_package():
    defaults = schema_defaults()
    assert {"tau", "checkpoint_every", "epochs"} <= set(defaults)
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in copies_of_schema_defaults(path, defaults)]
    assert not found, (
        "schema defaults copied into the package (read the value from the spec the schema filled, "
        f"or mark a deliberate repetition with '{MARKER}: <why>'):\n" + "\n".join(found)
    )


MAX_FUNCTION_LINES = 80


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(REPO)}:{node.lineno}: {node.name} has {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_function_in_the_package_is_over_80_lines():
    # Job functions read as their steps (load, resume, loop, export) over small helpers.
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in long_functions(path)]
    assert not found, "functions over 80 lines (split them into named steps):\n" + "\n".join(found)
