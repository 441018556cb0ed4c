#!/usr/bin/env python
"""Write config/README.md from the config schema (anogen/config.schema.yaml).

Every key, grouped by section as the schema nests them, with its type/range, its default
(the full-run value) and its description. The schema is the one source: regenerate after
adding a key (tests/test_config_docs.py fails while the file is out of date):

    python tools/config_docs.py            # rewrite config/README.md
    python tools/config_docs.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUTPUT = REPO / "config" / "README.md"

HEADER = """# Configuration keys

Generated from `anogen/config.schema.yaml` by `python tools/config_docs.py`; do not edit by hand.

`config/config.yaml` is the offline demo (tiny random models, small budgets) and
`config/mvtec.yaml` the paper's run on MVTec AD. Any key not set in the config file (or with
`--config key=value`) takes the default below, which is the paper's (full-run) value. The
config is validated before any job is planned: a misspelt key or a value outside its range
stops the run with a message naming the key. Values that change results are part of the
content key of exactly the artifacts that read them (see `docs/architecture.md`); keys marked
as speed-only in their description are not.
"""


def _resolve(node: dict, defs: dict) -> dict:
    """Merge a local ``$ref`` into the node (the node's own fields win)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = defs.get(ref.rsplit("/", 1)[-1], {})
    merged = dict(_resolve(target, defs))
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _type_text(node: dict, defs: dict) -> str:
    node = _resolve(node, defs)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    for combo in ("oneOf", "anyOf"):
        if combo in node:
            return " or ".join(_type_text(option, defs) for option in node[combo])
    kind = node.get("type", "any")
    text = "/".join(kind) if isinstance(kind, list) else str(kind)
    if text == "array" and "items" in node:
        text = f"list of {_type_text(node['items'], defs)}"
        if node.get("minItems") is not None and node.get("minItems") == node.get("maxItems"):
            text += f" (exactly {node['minItems']})"
    bounds = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            bounds.append(f"{sign} {node[key]}")
    if "minLength" in node and node["minLength"] > 0:
        bounds.append("non-empty")
    if "pattern" in node:
        bounds.append(f"matches `{node['pattern']}`")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _default_text(node: dict) -> str:
    if "default" not in node:
        return "(required)" if node.get("_required") else ""
    value = node["default"]
    if isinstance(value, dict) and not value:
        return ""
    return f"`{json.dumps(value)}`"


def _rows(properties: dict, defs: dict, prefix: str, required: set[str]) -> Iterator[tuple[str, dict]]:
    for name, node in properties.items():
        node = _resolve(node, defs)
        if name in required:
            node = {**node, "_required": True}
        yield f"{prefix}{name}", node


def _section(title: str, node: dict, defs: dict, prefix: str) -> list[str]:
    """A table of the leaf keys of ``node``; nested objects become their own sections."""
    node = _resolve(node, defs)
    lines: list[str] = []
    nested: list[tuple[str, dict]] = []
    rows = []
    for key, child in _rows(node.get("properties", {}), defs, prefix, set(node.get("required", []))):
        if child.get("type") == "object" and "properties" in child:
            nested.append((key, child))
        else:
            rows.append((key, child))
    if rows or node.get("description"):
        lines.append(f"## `{title}`" if title else "## Top level")
        lines.append("")
        if node.get("description") and title:
            lines += [" ".join(str(node["description"]).split()), ""]
        if rows:
            lines.append("| key | type | default | description |")
            lines.append("|---|---|---|---|")
            for key, child in rows:
                description = " ".join(str(child.get("description", "")).split()).replace("|", "\\|")
                kind = _type_text(child, defs).replace("|", "\\|")
                lines.append(f"| `{key}` | {kind} | {_default_text(child)} | {description} |")
            lines.append("")
    for key, child in nested:
        lines += _section(key, child, defs, f"{key}.")
    return lines


def render(schema: dict) -> str:
    defs = schema.get("$defs", {})
    body = _section("", schema, defs, "")
    return HEADER + "\n" + "\n".join(body).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from anogen.config import load_schema

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if config/README.md is out of date")
    args = parser.parse_args(argv)
    text = render(load_schema())
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python tools/config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
