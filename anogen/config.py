"""The configuration: schema, defaults, loading and the checks a schema cannot express.

``validate_config(raw)`` validates against ``config.schema.yaml`` (shipped with the package,
linked from ``workflow/schemas/``), fills every default, and runs the semantic checks;
``load_config_file`` reads a YAML file (with overrides) through it. What each artifact reads
of a validated config, and so what reruns when a value changes, is decided by
``anogen.plan.Plan``.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import yaml

from anogen.errors import ConfigError
from anogen.provenance import check_teacher_file

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

# ``diffusion.model: tiny:<family>`` asks for a tiny random model, built by the ``tiny_model``
# rule into this folder: never a path that could be mistaken for a hub id (``owner/name``).
TINY_FAMILIES = ("ldm", "sd")
TINY_MODEL_DIR = "resources/models/tiny-random-{family}"


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _validator_with_defaults():
    from jsonschema import Draft202012Validator, validators

    base_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": fill_defaults})


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _schema_error_to_config_error(error) -> ConfigError:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = _dotted(path + [extra[0]]) if extra else _dotted(path)
        return ConfigError(key, "unknown key (misspelt, or not part of this section)")
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Report the alternative that got furthest (deepest in the data, then in the schema:
        # for defects: {"a/b": all} the bad name, not "'all' was expected"), with its own path.
        best = max(error.context, key=lambda e: (len(e.absolute_path), len(e.relative_schema_path)))
        if len(best.absolute_path) > len(path):
            return _schema_error_to_config_error(best)
        return ConfigError(_dotted(path), f"{error.instance!r} is not valid here ({best.message})")
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return ConfigError(_dotted(path + missing[:1]), "is required and has no default")
    if error.validator == "not" and isinstance(error.instance, str):
        return ConfigError(_dotted(path), f"{error.instance!r} must not contain '..'")
    if error.validator == "pattern":
        return ConfigError(_dotted(path), f"{error.instance!r} does not match {error.validator_value!r}")
    if error.validator == "propertyNames":
        return ConfigError(_dotted(path), f"invalid name: {error.message}")
    return ConfigError(_dotted(path), error.message)


def validate_config(raw: dict | None, *, changed_sections: set[str] | None = None) -> dict:
    """Return a validated deep copy of ``raw`` with every default filled in.

    ``changed_sections``: ``raw`` is a validated config with only these top-level sections
    changed (a study arm's ``set:``), so only they go through the schema again (the semantic
    checks always see the whole config). A study makes a config per arm, and the schema pass
    over a whole config is most of the cost of planning one.
    """
    config = copy.deepcopy(raw or {})
    schema = load_schema()
    if changed_sections is not None:
        unknown = sorted(set(changed_sections) - set(schema["properties"]))
        if unknown:
            raise ConfigError(unknown[0], "unknown key (misspelt, or not part of this section)")
        # the sections with their own schemas; ``$defs`` stay at the root, where their refs point
        schema = {
            **{k: v for k, v in schema.items() if k not in ("properties", "required")},
            "properties": {name: schema["properties"][name] for name in changed_sections},
        }
        schema["additionalProperties"] = True
    validator = _validator_with_defaults()(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        # The most specific error first: deep paths name the exact key.
        deepest = max(errors, key=lambda e: len(list(e.absolute_path)))
        raise _schema_error_to_config_error(deepest)
    _check_semantics(config)
    return config


def _check_semantics(config: dict) -> None:
    def check_box(where: str, box: dict | str) -> None:
        if box == "learned":
            return
        for axis in ("width", "height"):
            lo, hi = box[axis]
            if lo > hi:
                raise ConfigError(f"{where}.{axis}", f"range [{lo}, {hi}] has min > max")

    gen = config["generation"]
    check_box("generation.default_box", gen["default_box"])
    for cat, defects in gen["box_ranges"].items():
        for defect, box in ({} if defects == "learned" else defects).items():
            check_box(f"generation.box_ranges.{cat}.{defect}", box)
    ds = config["detectors"]["destseg"]
    if ds["student_steps"] >= ds["steps"]:
        raise ConfigError(
            "detectors.destseg.student_steps",
            f"{ds['student_steps']} must be smaller than detectors.destseg.steps ({ds['steps']})",
        )
    emb = config["embedding"]
    if emb["gradient_checkpointing"] and emb["cuda_graph"]:
        raise ConfigError(
            "embedding.gradient_checkpointing",
            "cannot be combined with embedding.cuda_graph (capturing the recomputation inside a "
            "CUDA graph is not supported here): set one of them to false",
        )
    _check_layout_options(config)
    model = config["diffusion"]["model"]
    if model.startswith("tiny:") and model[len("tiny:") :] not in TINY_FAMILIES:
        raise ConfigError("diffusion.model", f"{model!r}: a tiny random model is 'tiny:ldm' or 'tiny:sd'")
    if config["embedding"]["source"] == "authors" and not config["authors_repo"]:
        raise ConfigError(
            "embedding.source",
            "'authors' imports the published embeddings: set authors_repo to a clone of github.com/gaobb/AnoGen",
        )


def _check_layout_options(config: dict) -> None:
    """The demo is MVTec-layout; Folder layout: the defect names of abnormal_dir and mask_dir agree."""
    is_demo = os.path.normpath(config["data_root"]) == os.path.normpath(config["demo"]["root"])
    if is_demo and config["data_layout"] != "mvtec":
        raise ConfigError(
            "data_layout",
            f"data_root is the demo data set (demo.root), which is in the mvtec layout, not {config['data_layout']}",
        )
    if config["data_layout"] == "folder" and not config["folder"]["categories"]:
        raise ConfigError("folder.categories", "data_layout is folder: name at least one data set here")
    for name, opts in config["folder"]["categories"].items():
        abnormal, masks = opts["abnormal_dir"], opts["mask_dir"]
        if isinstance(masks, dict):
            defects = sorted(abnormal) if isinstance(abnormal, dict) else [config["default_defect"]]
            if sorted(masks) != defects:
                raise ConfigError(
                    f"folder.categories.{name}.mask_dir",
                    f"defect names {sorted(masks)} differ from abnormal_dir's {defects}",
                )


def check_required_sources(config: dict) -> None:
    """Stop a run whose detectors need a source the config requires but lacks.

    ``detectors.require_texture_source`` (the authors' protocol): DTD must be given to train a
    detector; with ``detectors.destseg.teacher: timm_a1`` the teacher file must be given. The
    workflow calls this from train_detector's input function, i.e. while the DAG is built and
    only when it holds a detector job: ``snakemake support embeddings`` needs no
    DTD, a run that trains detectors stops before its first job (dry runs included).
    """
    det = config["detectors"]
    if det["require_texture_source"] and not det["texture_source"]:
        raise ConfigError(
            "detectors.texture_source",
            "this configuration requires a DTD-style texture folder for the detectors' synthetic "
            "anomalies (detectors.require_texture_source is true, as in the authors' protocol); set "
            "detectors.texture_source to a copy of DTD's images/ folder (the stages support, "
            "embeddings and generated run without it)",
        )
    ds = det["destseg"]
    if "destseg" in det["models"] and ds["teacher"] == "timm_a1" and not ds["teacher_weights"]:
        check_teacher_file(ds["teacher"], None, None)  # a ConfigError naming the key and where to download


def load_config_file(path: str | Path, overrides: dict | None = None) -> dict:
    raw = _read_yaml(Path(path))
    if overrides:
        raw = deep_update(raw, overrides)
    return validate_config(resolve_extends(raw))


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError("extends", f"{path} does not exist") from None
    if not isinstance(raw, dict):
        raise ConfigError("<top level>", f"{path} does not hold a mapping of config keys")
    return raw


def resolve_extends(raw: dict, _chain: tuple[str, ...] = ()) -> dict:
    """``raw`` over the file its ``extends`` names (that file's own ``extends`` first), recursively.

    A study config (config/mvtec-paper-study.yaml) is a few keys over config/mvtec.yaml: writing
    the whole base out again would let the two drift apart. ``extends`` keeps the first file's
    path (for the record); a chain that comes back to a file already read is refused.
    """
    base_path = raw.get("extends")
    if not base_path:
        return raw
    if not isinstance(base_path, str):
        raise ConfigError("extends", f"{base_path!r} is not a path")
    found = _find_base(base_path)
    resolved = os.path.realpath(found)
    if resolved in _chain:
        raise ConfigError("extends", f"{base_path} extends itself (through {' -> '.join(_chain)})")
    base = resolve_extends(_read_yaml(found), (*_chain, resolved))
    return {**deep_update(base, {k: v for k, v in raw.items() if k != "extends"}), "extends": base_path}


# The checkout this package runs from: its config/ holds the presets a study file extends.
CHECKOUT = Path(__file__).resolve().parents[1]


def _find_base(base_path: str) -> Path:
    """``base_path`` as given (relative: to the working directory), else relative to the checkout
    (``snakemake -d elsewhere`` runs in another working directory, the presets stay in config/)."""
    path = Path(base_path)
    if path.is_file() or path.is_absolute():
        return path
    in_checkout = CHECKOUT / path
    if in_checkout.is_file():
        return in_checkout
    raise ConfigError("extends", f"{base_path} does not exist (looked in {Path.cwd()} and in {CHECKOUT})")


def deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
