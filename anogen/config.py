"""Config validation and the per-artifact config subsets that content keys are made of.

``load_config(raw)`` validates against ``config.schema.yaml`` (shipped with the package,
linked from ``workflow/schemas/``), fills every default, and runs the checks a schema
cannot express. ``Plan`` then answers, for each artifact, *exactly* which config values
it reads (its ``spec``) and which upstream artifacts it consumes (its ``inputs``); the
content key of an artifact is ``content_key(spec, inputs)``. This module is the single
place that decides what reruns when a value changes.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml

from anogen.errors import ConfigError
from anogen.keys import content_key

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

# Values that change how fast a job runs or how often it saves, never what it produces:
# they stay out of every content key (resume is bit-identical whatever checkpoint_every is).
_NOT_IN_KEYS = {"embedding": {"checkpoint_every"}, "generation": {"batch_size"}}


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
    if error.validator == "not" and isinstance(error.instance, str):
        return ConfigError(_dotted(path), f"{error.instance!r} must not contain '..'")
    if error.validator == "pattern":
        return ConfigError(_dotted(path), f"{error.instance!r} does not match {error.validator_value!r}")
    if error.validator == "propertyNames":
        return ConfigError(_dotted(path), f"invalid name: {error.message}")
    return ConfigError(_dotted(path), error.message)


def validate_config(raw: dict | None) -> dict:
    """Return a validated deep copy of ``raw`` with every default filled in."""
    config = copy.deepcopy(raw or {})
    validator = _validator_with_defaults()(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        # The most specific error first: deep paths name the exact key.
        deepest = max(errors, key=lambda e: len(list(e.absolute_path)))
        raise _schema_error_to_config_error(deepest)
    _check_semantics(config)
    return config


def _check_semantics(config: dict) -> None:
    def check_box(where: str, box: dict) -> None:
        for axis in ("width", "height"):
            lo, hi = box[axis]
            if lo > hi:
                raise ConfigError(f"{where}.{axis}", f"range [{lo}, {hi}] has min > max")

    gen = config["generation"]
    check_box("generation.default_box", gen["default_box"])
    for cat, defects in gen["box_ranges"].items():
        for defect, box in defects.items():
            check_box(f"generation.box_ranges.{cat}.{defect}", box)
    ds = config["detectors"]["destseg"]
    if ds["student_steps"] >= ds["steps"]:
        raise ConfigError(
            "detectors.destseg.student_steps",
            f"{ds['student_steps']} must be smaller than detectors.destseg.steps ({ds['steps']})",
        )
    _check_layout_options(config)
    tiny = config["diffusion"]["tiny"]
    if tiny.get("family") and "://" in config["diffusion"]["model"]:
        raise ConfigError("diffusion.tiny.family", "a tiny model is built into a local folder; diffusion.model must be a path")


def _check_layout_options(config: dict) -> None:
    """The demo is MVTec-layout; Folder layout: the defect names of abnormal_dir and mask_dir agree."""
    is_demo = os.path.normpath(config["data_root"]) == os.path.normpath(config["demo"]["root"])
    if is_demo and config["data_layout"] != "mvtec":
        raise ConfigError("data_layout", f"data_root is the demo data set (demo.root), which is in the mvtec layout, not {config['data_layout']}")
    if config["data_layout"] == "folder" and not config["folder"]["categories"]:
        raise ConfigError("folder.categories", "data_layout is folder: name at least one data set here")
    for name, opts in config["folder"]["categories"].items():
        abnormal, masks = opts["abnormal_dir"], opts["mask_dir"]
        if isinstance(masks, dict):
            defects = sorted(abnormal) if isinstance(abnormal, dict) else [config["default_defect"]]
            if sorted(masks) != defects:
                raise ConfigError(f"folder.categories.{name}.mask_dir",
                                  f"defect names {sorted(masks)} differ from abnormal_dir's {defects}")


def load_config_file(path: str | Path, overrides: dict | None = None) -> dict:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if overrides:
        raw = deep_update(raw, overrides)
    return validate_config(raw)


def deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _without(section: dict, drop: set[str]) -> dict:
    return {k: v for k, v in section.items() if k not in drop}


class Plan:
    """Categories x defects to run, and the spec/inputs/key of every artifact."""

    def __init__(self, config: dict, layout: dict[str, dict] | None = None):
        self.config = config
        self._layout = layout  # {category: {"defects": [...], "texture": bool}}; None = discover

    # ------------------------------------------------------------------ data
    @property
    def is_demo(self) -> bool:
        return os.path.normpath(self.config["data_root"]) == os.path.normpath(self.config["demo"]["root"])

    @functools.cached_property
    def layout(self) -> dict[str, dict]:
        if self._layout is not None:
            return self._layout
        if self.is_demo:
            from anogen.data.demo import demo_layout

            return demo_layout(self.config["demo"])
        from anogen.data.layouts import discover, layout_spec

        root = self.config["data_root"]
        if not Path(root).is_dir():
            raise ConfigError("data_root", f"{root!r} is not a folder (a {self.config['data_layout']}-layout data set is expected)")
        layout, self._rejected_categories = discover(root, layout_spec(self.config))
        return layout

    _rejected_categories: list = []  # badly named category folders (anogen.data.layouts.discover)

    @staticmethod
    def _fail_on_rejected(rejected: list, key: str) -> None:
        """A badly named folder stops the run only when the config selects it ('all')."""
        if rejected:
            first = rejected[0]
            raise type(first)(first.path, f"{first.problem}, or leave it out by listing the ones to run in `{key}:`")

    @functools.cached_property
    def categories(self) -> list[str]:
        wanted = self.config["categories"]
        available = list(self.layout)
        if wanted == "all":
            self._fail_on_rejected(self._rejected_categories, "categories")
            if not available:
                raise ConfigError("data_root", f"no category (a folder with train/good) under {self.config['data_root']!r}")
            return available
        missing = [c for c in wanted if c not in self.layout]
        if missing:
            raise ConfigError("categories", f"{missing} not found under {self.config['data_root']!r} (available: {available})")
        return list(wanted)

    def defects(self, category: str) -> list[str]:
        available = self.layout[category]["defects"]
        wanted = self.config["defects"]
        choice = "all" if wanted == "all" else wanted.get(category, "all")
        if choice == "all":
            self._fail_on_rejected(self.layout[category].get("rejected", []), f"defects.{category}")
            if not available:
                raise ConfigError("defects", f"category {category!r} has no defect folder under test/")
            return list(available)
        missing = [d for d in choice if d not in available]
        if missing:
            raise ConfigError(f"defects.{category}", f"{missing} not found (available: {available})")
        return list(choice)

    def pairs(self) -> list[tuple[str, str]]:
        return [(c, d) for c in self.categories for d in self.defects(c)]

    def texture(self, category: str) -> bool:
        opts = self.config["category_options"].get(category)
        if opts is not None:
            return bool(opts["texture"])
        return bool(self.layout[category].get("texture", False))

    def foreground_template(self, category: str) -> str | None:
        opts = self.config["category_options"].get(category)
        return opts["foreground_template"] if opts else None

    def box(self, category: str, defect: str) -> dict:
        gen = self.config["generation"]
        box = gen["box_ranges"].get(category, {}).get(defect, gen["default_box"])
        return {"width": list(box["width"]), "height": list(box["height"]), "rotate": bool(box.get("rotate", False))}

    # ------------------------------------------------------------------ specs
    def dataset_spec(self) -> dict:
        if self.is_demo:
            return {"demo": self.config["demo"]}
        # layout options are data identity (the lead adds data fingerprints here)
        from anogen.data.layouts import layout_spec

        return {"data_root": self.config["data_root"], **layout_spec(self.config)}

    def dataset_params(self) -> dict:
        """What a data-reading job gets as ``params.dataset``: the layout options."""
        from anogen.data.layouts import layout_spec

        return layout_spec(self.config)

    def model_spec(self) -> dict:
        d = self.config["diffusion"]
        spec = {"model": d["model"], "revision": d["revision"]}
        if d["tiny"].get("family"):
            spec["tiny"] = d["tiny"]
        return spec

    def support_spec(self, category: str, defect: str) -> dict:
        s = self.config["support"]
        return {"category": category, "defect": defect, "shots": s["shots"], "seed": s["seed"]}

    def foreground_spec(self, category: str) -> dict:
        return {
            "category": category,
            "texture": self.texture(category),
            "foreground_template": self.foreground_template(category),
            "grabcut_iterations": self.config["generation"]["grabcut_iterations"],
            "max_normal_images": self.config["generation"]["max_normal_images"],
        }

    def embedding_spec(self, category: str, defect: str) -> dict:
        spec = _without(self.config["embedding"], _NOT_IN_KEYS["embedding"])
        spec["mixed_precision"] = self.config["diffusion"]["mixed_precision"]
        spec["resize"] = self.config["resize"]
        return spec

    def generation_spec(self, category: str, defect: str) -> dict:
        gen = self.config["generation"]
        spec = _without(gen, {"box_ranges", "default_box", "grabcut_iterations", *_NOT_IN_KEYS["generation"]})
        spec.update(category=category, defect=defect, box=self.box(category, defect), texture=self.texture(category))
        spec["mixed_precision"] = self.config["diffusion"]["mixed_precision"]
        spec["resize"] = self.config["resize"]
        return spec

    def detector_spec(self, category: str, detector: str, variant: str) -> dict:
        det = self.config["detectors"]
        spec = {
            "category": category,
            "detector": detector,
            "variant": variant,
            "image_size": det["image_size"],
            "seed": det["seed"],
            "texture_source": det["texture_source"],
            "resize": self.config["resize"],
            detector: det[detector],
        }
        if variant != "baseline":
            spec.update(tau=det["tau"], mix_prob=det["mix_prob"], weak_on_synthetic=det["weak_on_synthetic"])
        return spec

    def evaluation_spec(self, category: str, detector: str, variant: str) -> dict:
        spec = dict(self.config["evaluation"])
        spec.update(category=category, detector=detector, variant=variant,
                    exclude_from_test=self.config["support"]["exclude_from_test"], resize=self.config["resize"])
        return spec

    # ------------------------------------------------------------------ keys (Merkle chain)
    @functools.cached_property
    def dataset_key(self) -> str:
        return content_key(self.dataset_spec())

    @functools.cached_property
    def model_key(self) -> str:
        return content_key(self.model_spec())

    def support_inputs(self, category, defect) -> dict:
        return {"dataset": self.dataset_key}

    def foreground_inputs(self, category) -> dict:
        return {"dataset": self.dataset_key}

    def embedding_inputs(self, category, defect) -> dict:
        return {"support": self.support_key(category, defect), "model": self.model_key}

    def generation_inputs(self, category, defect) -> dict:
        return {
            "embedding": self.embedding_key(category, defect),
            "foreground": self.foreground_key(category),
            "model": self.model_key,
        }

    def detector_inputs(self, category, detector, variant) -> dict:
        inputs = {"dataset": self.dataset_key}
        if variant != "baseline":
            for defect in self.defects(category):
                inputs[f"generation/{defect}"] = self.generation_key(category, defect)
        return inputs

    def evaluation_inputs(self, category, detector, variant) -> dict:
        inputs = {"detector": self.detector_key(category, detector, variant), "dataset": self.dataset_key}
        if self.config["support"]["exclude_from_test"]:
            for defect in self.defects(category):
                inputs[f"support/{defect}"] = self.support_key(category, defect)
        return inputs

    def support_key(self, category, defect) -> str:
        return content_key(self.support_spec(category, defect), self.support_inputs(category, defect))

    def foreground_key(self, category) -> str:
        return content_key(self.foreground_spec(category), self.foreground_inputs(category))

    def embedding_key(self, category, defect) -> str:
        return content_key(self.embedding_spec(category, defect), self.embedding_inputs(category, defect))

    def generation_key(self, category, defect) -> str:
        return content_key(self.generation_spec(category, defect), self.generation_inputs(category, defect))

    def detector_key(self, category, detector, variant) -> str:
        return content_key(self.detector_spec(category, detector, variant), self.detector_inputs(category, detector, variant))

    def evaluation_key(self, category, detector, variant) -> str:
        return content_key(self.evaluation_spec(category, detector, variant), self.evaluation_inputs(category, detector, variant))

    @functools.cached_property
    def export_key(self) -> str:
        return content_key({"export": "generated"}, {f"{c}/{d}": self.generation_key(c, d) for c, d in self.pairs()})

    # ------------------------------------------------------------------ the runs
    def detector_runs(self) -> list[tuple[str, str, str]]:
        det = self.config["detectors"]
        return [(c, m, v) for c in self.categories for m in det["models"] for v in det["variants"]]
