"""The plan: which artifacts a validated config asks for, and exactly what each one reads.

``Plan`` answers, for each artifact, *exactly* which config values it reads (its ``spec``) and
which upstream artifacts it consumes (its ``inputs``); the content key of an artifact is
``content_key(spec, inputs)``. This module is the single place that decides what reruns when
a value changes. It sits above the data layer (it lists data files to fingerprint them) and
below the workflow, the CLI and the studies (``anogen.studies``), which all plan through it;
``anogen.config`` below it only validates. The per-stage builders it dispatches to (what each
stage's job reads) are in ``anogen.plan_stages``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from anogen import authors
from anogen.artifacts import STAGES, JobSpec
from anogen.config import TINY_MODEL_DIR
from anogen.data import demo, layouts
from anogen.data.fingerprint import fingerprint
from anogen.data.images import is_image_file
from anogen.data.index import relative_to_root
from anogen.data.support import choose_support
from anogen.diffusion.model_files import model_files_record
from anogen.errors import ConfigError
from anogen.keys import content_key
from anogen.plan_stages import StageBuilders


def _learned_box_spec(learned: dict) -> dict:
    """The ``generation.learned_box`` values its rule reads (the rule's name only when it is not the
    earlier 'range' rule, so that a 'range' box with a boolean rotate keeps its earlier key)."""
    if learned["rule"] == "range":
        names = ["margin", "min_size", "min_component"]
    else:
        names = ["rule", "min_size", "min_component", "min_fill", "size_jitter", "angle_jitter"]
    if learned["rotate"] == "auto":
        names.append("elongation")  # read only to decide what turns
    return {name: learned[name] for name in names}


class Plan(StageBuilders):
    """Categories x defects to run, and the spec/inputs/key of every artifact."""

    def __init__(self, config: dict, layout: dict[str, dict] | None = None):
        self.config = config
        self._layout = layout  # {category: {"defects": [...], "texture": bool}}; None = discover
        # Set by the studies planner (anogen.studies.planner) before any key is asked for:
        # {category: excluded test paths}, the union over a study's arms (one test set per study),
        # and {(category, defect): N}, the images per normal image of the generation this plan's
        # detectors read the first ones of (arms differing only in N share the largest).
        self.study_excluded: dict[str, tuple[str, ...]] | None = None
        self.generation_pool: dict[tuple[str, str], int] = {}
        # File listings and data fingerprints, by what determines them: the studies planner gives
        # every arm the config's own dict (same data_root, same moment), so each is made once.
        self.data_memo: dict = {}

    # ------------------------------------------------------------------ data
    @property
    def is_demo(self) -> bool:
        return os.path.normpath(self.config["data_root"]) == os.path.normpath(self.config["demo"]["root"])

    @functools.cached_property
    def layout(self) -> dict[str, dict]:
        if self._layout is not None:
            return self._layout
        if self.is_demo:
            return demo.demo_layout(self.config["demo"])
        root = self.config["data_root"]
        if not Path(root).is_dir():
            raise ConfigError(
                "data_root", f"{root!r} is not a folder (a {self.config['data_layout']}-layout data set is expected)"
            )
        layout, self._rejected_categories = layouts.discover(root, layouts.layout_spec(self.config))
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
                raise ConfigError(
                    "data_root", f"no category (a folder with train/good) under {self.config['data_root']!r}"
                )
            return available
        missing = [c for c in wanted if c not in self.layout]
        if missing:
            raise ConfigError(
                "categories", f"{missing} not found under {self.config['data_root']!r} (available: {available})"
            )
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
        return bool(self.layout[category]["texture"])  # every layout entry says (anogen.data.layouts)

    def foreground_template(self, category: str) -> str | None:
        opts = self.config["category_options"].get(category)
        return opts["foreground_template"] if opts else None

    def foreground_method(self, category: str) -> str | None:
        """How an object category's foreground set is estimated (``category_options.<c>.foreground_method``);
        None where no method is read (a texture or a foreground template)."""
        if self.texture(category) or self.foreground_template(category):
            return None
        opts = self.config["category_options"].get(category)
        if opts is None:
            return "grabcut"  # repeated on purpose: the schema's default, for a category without an entry
        return opts["foreground_method"]

    # ------------------------------------------------------------------ explicit and published inputs
    @functools.cached_property
    def authors_repo(self) -> Path | None:
        repo = self.config.get("authors_repo")
        if not repo:
            return None

        return authors.check_authors_repo(repo)

    def named_support_files(self, category: str, defect: str) -> tuple[str, ...] | None:
        """The named support files of (category, defect): support.files, else the authors' set, else None (seeded)."""
        listed = (self.config["support"].get("files") or {}).get(category, {}).get(defect)
        if listed:
            return tuple(listed)
        if self.uses_published_support:
            published = authors.published_support_files(self.authors_repo, category, defect)
            return None if published is None else tuple(published)
        return None

    @property
    def uses_published_support(self) -> bool:
        """The authors' published support sets are read (authors_repo set and support.published true)."""
        return self.authors_repo is not None and bool(self.config["support"]["published"])

    def support_origin(self, category: str, defect: str) -> str:
        """Where the named support files come from, for error messages (not part of any key)."""
        if (self.config["support"].get("files") or {}).get(category, {}).get(defect):
            return f"support.files.{category}.{defect}"
        if self.uses_published_support:
            return f"the authors' published support set {authors.published_support_dir(self.authors_repo, category, defect)}"
        return "support.seed"

    def box_template(self, category: str, defect: str) -> Path | None:
        """The per-defect box template: generation.templates, else the authors' mask.png, else None."""
        listed = self.config["generation"]["templates"].get(category, {}).get(defect)
        if listed:
            path = Path(listed)
            if not path.is_file():
                raise ConfigError(f"generation.templates.{category}.{defect}", f"{listed!r} is not a file")
            return path
        if self.authors_repo is not None:
            return authors.published_template(self.authors_repo, category, defect)
        return None

    def embedding_source(self, category: str, defect: str) -> Path | None:
        """The authors' embeddings.pt to import for (category, defect); None when embeddings are learned."""
        if self.config["embedding"]["source"] != "authors":
            return None

        path = authors.published_embedding(self.authors_repo, category, defect)
        if not path.is_file():
            raise ConfigError(
                "embedding.source",
                f"'authors' but {path} does not exist (the authors published no embedding for "
                f"{category}/{defect}); leave this defect out (defects:) or learn it (embedding.source: learn)",
            )
        return path

    def box(self, category: str, defect: str) -> dict:
        """The generation spec's box: a hand-set range, or how a learned one is made (``learned``)."""
        gen = self.config["generation"]
        per_category = gen["box_ranges"].get(category, {})
        box = "learned" if per_category == "learned" else per_category.get(defect, gen["default_box"])
        if box == "learned":
            learned = gen["learned_box"]
            return {"learned": _learned_box_spec(learned), "rotate": learned["rotate"]}
        return {"width": list(box["width"]), "height": list(box["height"]), "rotate": bool(box["rotate"])}

    def learns_box(self, category: str, defect: str) -> bool:
        """Whether (category, defect)'s box range comes from its support masks."""
        return "learned" in self.box(category, defect)

    # ------------------------------------------------------------------ the diffusion model
    @property
    def tiny_family(self) -> str | None:
        """``ldm``/``sd`` when the config asks explicitly for a tiny random model, else None."""
        model = self.config["diffusion"]["model"]
        return model[len("tiny:") :] if model.startswith("tiny:") else None

    @property
    def model_path(self) -> str:
        """What ``from_pretrained`` loads: the hub id or folder, or the tiny model's folder."""
        family = self.tiny_family
        return TINY_MODEL_DIR.format(family=family) if family else self.config["diffusion"]["model"]

    def model_files(self) -> dict | None:
        """The files of the configured model that ``load_backbone`` reads, each with its identity
        (``anogen.diffusion.model_files.model_files_record``); None for the tiny model (its rule makes
        it: no files at planning) and for a hub id not in the cache. Looked up once for all the plans
        that share ``data_memo`` (a study's arms), not once per arm."""
        if self.tiny_family:
            return None
        d = self.config["diffusion"]
        memo = ("model", d["model"], d["revision"], d["variant"])
        if memo not in self.data_memo:
            self.data_memo[memo] = model_files_record(d["model"], d["revision"], d["variant"])
        return self.data_memo[memo]

    # ------------------------------------------------------------------ data files
    def category_files(self, category: str):
        """The files of ``category`` as listed (no decoding); None for the demo (made by a rule)."""
        if self.is_demo:
            return None
        return self._category_files(category)

    @functools.cache
    def _category_files(self, category: str):
        spec = layouts.layout_spec(self.config)
        memo = ("files", self.config["data_root"], category, content_key(spec))
        if memo not in self.data_memo:
            self.data_memo[memo] = layouts.category_files(self.config["data_root"], category, spec)
        return self.data_memo[memo]

    @functools.cache
    def support_files(self, category: str, defect: str) -> tuple[str, ...] | None:
        """The support image names: the named ones, else the plan's seeded choice among the
        defect folder's file names (None: too few images; the support job says so)."""
        named = self.named_support_files(category, defect)
        if named is not None:
            return named
        s = self.config["support"]
        names = [n for n in self.test_names_for_support(category, defect) if is_image_file(n)]
        if len(names) < s["shots"]:
            return None
        return tuple(choose_support(names, category, defect, s["shots"], s["seed"], s["offset"]))

    @functools.cache
    def excluded_from_test(self, category: str) -> tuple[str, ...]:
        """Root-relative paths of the test images the evaluation leaves out (sorted): this plan's
        support images, or in a study the union of all its arms' (``study_excluded``)."""
        if self.study_excluded is not None:
            return self.study_excluded[category]
        return self.own_support_exclusions(category)

    def own_support_exclusions(self, category: str) -> tuple[str, ...]:
        """The test images this config's own support sets take out (sorted; none without exclude_from_test)."""
        if not self.config["support"]["exclude_from_test"]:
            return ()
        chosen = {
            self._test_relpath(category, d, name)
            for d in self.defects(category)
            for name in self.support_files(category, d) or ()
        }
        sample_of = layouts.layout_module(layouts.layout_spec(self.config)).sample_of
        if sample_of is not None and not self.is_demo:
            chosen |= self._sibling_views(category, chosen, sample_of)
        return tuple(sorted(chosen))

    def _sibling_views(self, category: str, chosen: set[str], sample_of) -> set[str]:
        """Multi-view samples (Real-IAD): every test view (any label) of the samples the support views belong to."""
        files = self._category_files(category)
        samples = {sample_of(rel) for rel in chosen}
        views = (relative_to_root(files.root, p) for paths in files.test.values() for p in paths)
        return {rel for rel in views if sample_of(rel) in samples}

    def _test_relpath(self, category: str, defect: str, name: str) -> str:
        """Data-root-relative POSIX path of a test image, as evaluation items name it."""
        if self.is_demo:
            return f"{category}/test/{defect}/{name}"  # the demo is MVTec-layout
        return self._category_files(category).relpath(defect, name)

    @functools.cache
    def _data_fingerprint(self, category: str, role: str, defect: str | None = None) -> str:
        """Fingerprint of the data files one artifact reads (see anogen.data.fingerprint)."""
        if self.is_demo:
            # The demo data is a pure function of demo.* (its own rule makes it), so its key
            # stands for every file of it; files listed before the rule ran would not.
            return self.dataset_key

        files = self._category_files(category)
        if role == "train":
            depends = self.config["generation"]["max_normal_images"] if defect == "foreground" else None
        elif role == "support":
            depends = self.support_files(category, defect)
        elif role == "test":
            depends = self.excluded_from_test(category)
        else:
            depends = None
        memo = ("fingerprint", id(files), category, role, defect, depends)
        if memo not in self.data_memo:
            self.data_memo[memo] = self._fingerprint_files(files, category, role, defect)
        return self.data_memo[memo]

    def _fingerprint_files(self, files, category: str, role: str, defect: str | None) -> str:
        root = files.root
        if role == "train":
            limit = self.config["generation"]["max_normal_images"] if defect == "foreground" else None
            images = list(files.train_good)
            return fingerprint(root, images[:limit] if limit else images)
        if role == "support":
            names = self.test_names_for_support(category, defect)
            chosen = self.support_files(category, defect) or names
            folder = files.test.get(defect, ())
            paths = [p for p in folder if p.name in set(chosen)]
            paths += [m for m in (files.mask_of(defect, p) for p in paths) if m is not None]
            return fingerprint(root, paths, names=names)
        if role == "defect":  # the real anomalies of one defect type (generation quality's reference)
            images = list(files.test.get(defect, ()))
            masks = [m for m in (files.mask_of(defect, p) for p in images) if m is not None]
            return fingerprint(root, images + masks)
        # role == "test": every test image and mask the evaluation reads
        excluded = set(self.excluded_from_test(category))
        paths = []
        for defect_name, images in sorted(files.test.items()):
            for image in images:
                if files.relpath(defect_name, image.name) in excluded:
                    continue
                paths.append(image)
                mask = files.mask_of(defect_name, image)
                if mask is not None:
                    paths.append(mask)
        return fingerprint(root, paths)

    def test_names_for_support(self, category: str, defect: str) -> list[str]:
        if self.is_demo:
            return demo.demo_test_names(self.config["demo"])
        return self._category_files(category).test_names(defect)

    # ------------------------------------------------------------------ specs
    def dataset_spec(self) -> dict:
        if self.is_demo:
            return {"demo": self.config["demo"]}
        # layout options are data identity (the files themselves: each job's _data_fingerprint)
        return {"data_root": self.config["data_root"], **layouts.layout_spec(self.config)}

    def dataset_params(self) -> dict:
        """What a data-reading job gets as ``params.dataset``: the layout options."""
        return layouts.layout_spec(self.config)

    def model_spec(self) -> dict:
        """The model's part of the keys of embeddings and generations: the files it reads, not where
        they are (moving the folder or the cache reruns nothing; a new snapshot or retrained weights
        rerun). The tiny model is a pure function of ``diffusion.tiny``, and a hub id not in the
        cache is known by its name and revision only."""
        d = self.config["diffusion"]
        found = self.model_files()
        if found is not None:
            return {"variant": d["variant"], "scheduler": d["scheduler"], "files": found["files"]}
        spec = {k: d[k] for k in ("model", "revision", "variant", "scheduler")}
        if self.tiny_family:
            spec["tiny"] = d["tiny"]
        return spec

    # ------------------------------------------------------------------ the artifact graph
    # One generic entry per question (spec, inputs, key, path, job of a stage instance) over
    # per-stage builders (anogen.plan_stages): ``_<stage>_spec`` (the hashed config values), ``_<stage>_upstream``
    # (the keyed artifacts it reads, as (stage, wildcard values)), ``_<stage>_data_inputs`` (the
    # data set, data fingerprints, model) and ``_<stage>_runtime`` (values outside the key).
    # The Snakemake rules, ``anogen gc`` and the jobs all ask these, so the graph is written once.
    def spec(self, stage: str, *values: str) -> dict:
        return getattr(self, f"_{stage}_spec")(*values)

    def upstream(self, stage: str, *values: str) -> dict[str, tuple[str, tuple[str, ...]]]:
        """The keyed artifacts a job reads: input name -> (stage, wildcard values)."""
        return getattr(self, f"_{stage}_upstream")(*values)

    def inputs(self, stage: str, *values: str) -> dict[str, str]:
        inputs = dict(getattr(self, f"_{stage}_data_inputs")(*values))
        inputs.update({name: self.key(s, *v) for name, (s, v) in self.upstream(stage, *values).items()})
        return inputs

    @functools.cache
    def key(self, stage: str, *values: str) -> str:
        return content_key(self.spec(stage, *values), self.inputs(stage, *values))

    def path(self, stage: str, *values: str, name: str | None = None) -> str:
        """The file ``name`` (default: the stage's main file) of one keyed artifact."""
        return STAGES[stage].path(self.config["results_dir"], self.key(stage, *values), values, name)

    def upstream_paths(self, stage: str, *values: str, of: str, name: str | None = None) -> list[str]:
        """The files of the upstream artifacts of stage ``of`` that one job reads."""
        return [self.path(s, *v, name=name) for s, v in self.upstream(stage, *values).values() if s == of]

    @functools.cache
    def job(self, stage: str, *values: str) -> JobSpec:
        """Everything the job of one stage instance reads: hashed spec, inputs, key, runtime values."""
        spec, inputs = self.spec(stage, *values), self.inputs(stage, *values)
        runtime = getattr(self, f"_{stage}_runtime")(*values)
        return JobSpec.make(STAGES[stage], values, spec, inputs, self.key(stage, *values), runtime)

    def instances(self, stage: str) -> list[tuple[str, ...]]:
        """Every wildcard tuple of ``stage`` this config plans."""
        if stage == "foreground":
            return [(c,) for c in self.categories]
        if stage in ("detector", "evaluation"):
            return self.detector_runs()
        if stage == "quality" and not self.computes_quality:
            return []
        return self.pairs()

    # ------------------------------------------------------------------ keys of what is not a stage
    @functools.cached_property
    def dataset_key(self) -> str:
        return content_key(self.dataset_spec())

    @functools.cached_property
    def model_key(self) -> str:
        return content_key(self.model_spec())

    @functools.cached_property
    def export_key(self) -> str:
        return content_key({"export": "generated"}, {f"{c}/{d}": self.key("generation", c, d) for c, d in self.pairs()})

    # ------------------------------------------------------------------ the runs
    def detector_runs(self) -> list[tuple[str, str, str]]:
        det = self.config["detectors"]
        return [(c, m, v) for c in self.categories for m in det["models"] for v in det["variants"]]
