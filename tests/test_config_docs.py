"""config/README.md is generated from the schema and lists every key."""

import importlib.util

from anogen.config import load_schema
from tests import e2e


def _tool():
    spec = importlib.util.spec_from_file_location("config_docs", e2e.REPO / "tools" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_keys(node, defs, prefix=""):
    ref = node.get("$ref")
    if ref:
        node = {**defs[ref.rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    for name, child in node.get("properties", {}).items():
        ref = child.get("$ref")
        resolved = {**defs[ref.rsplit("/", 1)[-1]], **child} if ref else child
        if resolved.get("type") == "object" and "properties" in resolved:
            yield from _leaf_keys(resolved, defs, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_config_readme_is_up_to_date():
    tool = _tool()
    expected = tool.render(load_schema())
    current = (e2e.REPO / "config" / "README.md").read_text(encoding="utf-8")
    assert current == expected, "config/README.md is out of date: run python tools/config_docs.py"
    assert tool.main(["--check"]) == 0


def test_every_schema_key_has_a_row_with_its_default():
    schema = load_schema()
    text = _tool().render(schema)
    keys = list(_leaf_keys(schema, schema["$defs"]))
    assert "evaluation.n_visualizations" in keys and "detectors.draem.epochs" in keys
    for key in keys:
        assert f"| `{key}` |" in text, key
    row = next(line for line in text.splitlines() if line.startswith("| `evaluation.n_visualizations` |"))
    assert "`4`" in row and "per defect type" in row and "integer (>= 0)" in row
