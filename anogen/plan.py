"""The plan: which artifacts a validated config asks for, and exactly what each one reads.

``Plan`` answers, for each artifact, *exactly* which config values it reads (its ``spec``) and
which upstream artifacts it consumes (its ``inputs``); the content key of an artifact is
``content_key(spec, inputs)``. This module is the single place that decides what reruns when
a value changes. It sits above the data layer (it lists data files to fingerprint them) and
below the workflow, the CLI and the studies (``anogen.studies``), which all plan through it;
``anogen.config`` below it only validates.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from anogen import authors
from anogen.artifacts import STAGES, JobSpec
from anogen.config import TINY_MODEL_DIR
from anogen.data import demo, layouts
from anogen.data.fingerprint import file_fingerprint, fingerprint
from anogen.data.images import is_image_file
from anogen.data.index import relative_to_root
from anogen.data.support import choose_support
from anogen.data.texture_files import texture_fingerprint
from anogen.diffusion.model_files import model_files_record
from anogen.errors import ConfigError
from anogen.io import sha256_file_cached
from anogen.keys import content_key
from anogen.provenance import find_hub_resnet18

# Values that change how fast a job runs or how often it saves, never what it produces:
# they stay out of every content key (resume is bit-identical whatever checkpoint_every is).
_NOT_IN_KEYS = {
    "embedding": {"checkpoint_every", "cuda_graph", "gradient_checkpointing"},
    "generation": {"batch_size", "channels_last", "compile"},
    "evaluation": {"batch_size"},
}
# Selectors, not values: they decide which artifact a defect gets and reach the keys through
# the per-defect fields they resolve to (an embedding's source sha256, a template's sha256).
_SELECTORS = {"embedding": {"source"}, "generation": {"templates", "template_containment"}}


def _without(section: dict, drop: set[str]) -> dict:
    return {k: v for k, v in section.items() if k not in drop}


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


class Plan:
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
    # per-stage builders: ``_<stage>_spec`` (the hashed config values), ``_<stage>_upstream``
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

    # ------------------------------------------------------------------ support sets
    def _support_spec(self, category: str, defect: str) -> dict:
        s = self.config["support"]
        files = self.support_files(category, defect)
        files = None if files is None else list(files)
        if self.named_support_files(category, defect) is not None:
            # Named files: shots and seed do not apply; the names (their order included) do.
            return {"category": category, "defect": defect, "files": files}
        # Seeded: the choice the plan made from the file names (copied exactly by the job). Offset 0
        # is left out, so the keys of sets made before offsets existed stay valid (files hold the choice).
        spec = {"category": category, "defect": defect, "shots": s["shots"], "seed": s["seed"], "files": files}
        return {**spec, "offset": s["offset"]} if s["offset"] else spec

    def _support_upstream(self, category: str, defect: str) -> dict:
        return {}

    def _support_data_inputs(self, category: str, defect: str) -> dict:
        return {"dataset": self.dataset_key, "data": self._data_fingerprint(category, "support", defect)}

    def _support_runtime(self, category: str, defect: str) -> dict:
        return {**self._data_runtime(), "origin": self.support_origin(category, defect)}

    def _data_runtime(self) -> dict:
        """Where a data-reading job finds the data (its identity is in the dataset key)."""
        return {"data_root": self.config["data_root"], "dataset": self.dataset_params()}

    # ------------------------------------------------------------------ foreground masks
    def _foreground_spec(self, category: str) -> dict:
        return {
            "category": category,
            "texture": self.texture(category),
            "foreground_template": self.foreground_template(category),
            "grabcut_iterations": self.config["generation"]["grabcut_iterations"],
            "max_normal_images": self.config["generation"]["max_normal_images"],
            "method": self.foreground_method(category),
        }

    def _foreground_upstream(self, category: str) -> dict:
        return {}

    def _foreground_data_inputs(self, category: str) -> dict:
        return {"dataset": self.dataset_key, "data": self._data_fingerprint(category, "train", "foreground")}

    def _foreground_runtime(self, category: str) -> dict:
        return self._data_runtime()

    # ------------------------------------------------------------------ stage 1: embeddings
    def _embedding_spec(self, category: str, defect: str) -> dict:

        source = self.embedding_source(category, defect)
        if source is not None:
            # An imported vector depends on the published file and the token it is stored under.
            return {
                "source": "authors",
                "category": category,
                "defect": defect,
                "placeholder_token": self.config["embedding"]["placeholder_token"],
                "sha256": sha256_file_cached(source),
            }
        spec = _without(self.config["embedding"], _NOT_IN_KEYS["embedding"] | _SELECTORS["embedding"])
        spec["mixed_precision"] = self.config["diffusion"]["mixed_precision"]
        spec["resize"] = self.config["resize"]
        return spec

    def _embedding_upstream(self, category: str, defect: str) -> dict:
        if self.embedding_source(category, defect) is not None:
            return {}  # imported: neither the support set nor the diffusion model is read
        return {"support": ("support", (category, defect))}

    def _embedding_data_inputs(self, category: str, defect: str) -> dict:
        return {} if self.embedding_source(category, defect) is not None else {"model": self.model_key}

    def _embedding_runtime(self, category: str, defect: str) -> dict:
        source = self.embedding_source(category, defect)
        if source is not None:
            return {"source": str(source)}
        emb = self.config["embedding"]
        speed = {k: emb[k] for k in ("checkpoint_every", "cuda_graph", "gradient_checkpointing")}
        return {**self._model_runtime(), **speed}

    def _model_runtime(self) -> dict:
        """Where the diffusion model is loaded from (its identity is in the model key)."""
        d = self.config["diffusion"]
        return {
            "model": self.model_path,
            "revision": d["revision"],
            "model_options": {"variant": d["variant"], "scheduler": d["scheduler"]},
        }

    # ------------------------------------------------------------------ stage 2: generation
    def images_per_normal(self) -> int:
        """N, the generated images per normal image (the paper's N, Fig. 5):
        ``generation.images_per_normal``, or boxes_per_image x images_per_box when that is null."""
        gen = self.config["generation"]
        if gen["images_per_normal"] is None:
            return int(gen["boxes_per_image"]) * int(gen["images_per_box"])
        return int(gen["images_per_normal"])

    def _generation_spec(self, category: str, defect: str) -> dict:
        gen = self.config["generation"]
        drop = {
            "boxes_per_image",  # the job reads N (below); its boxes follow from N and images_per_box
            "box_ranges",
            "default_box",
            "learned_box",  # in the resolved box below
            "grabcut_iterations",
            *_NOT_IN_KEYS["generation"],
            *_SELECTORS["generation"],
        }
        spec = _without(gen, drop)
        # N of the set generated: this config's, or in a run with studies the largest N of the
        # plans whose generation differs from this one's only in N (their detectors read its first N)
        spec["images_per_normal"] = self.generation_pool.get((category, defect), self.images_per_normal())
        spec.update(category=category, defect=defect, box=self.box(category, defect), texture=self.texture(category))
        template = self.box_template(category, defect)
        if template is not None:
            # The template's content, not its path: moving the clone reruns nothing.
            spec["template"] = {"sha256": sha256_file_cached(template), "containment": gen["template_containment"]}
        elif self.foreground_method(category) == "otsu_authors":
            # Boxes on the authors' Otsu foreground are kept as on their templates (strictly more inside).
            spec["foreground_containment"] = gen["template_containment"]
        spec["mixed_precision"] = self.config["diffusion"]["mixed_precision"]
        spec["resize"] = self.config["resize"]
        return spec

    def _generation_upstream(self, category: str, defect: str) -> dict:
        upstream = {"embedding": ("embedding", (category, defect))}
        if self.learns_box(category, defect):
            upstream["support"] = ("support", (category, defect))  # the masks the range is learned from
        if self.box_template(category, defect) is None:
            upstream["foreground"] = ("foreground", (category,))  # a template replaces the foreground
        return upstream

    def _generation_data_inputs(self, category: str, defect: str) -> dict:
        return {"model": self.model_key}

    def _generation_runtime(self, category: str, defect: str) -> dict:
        gen = self.config["generation"]
        template = self.box_template(category, defect)
        return {
            **self._data_runtime(),
            **self._model_runtime(),
            **{name: gen[name] for name in sorted(_NOT_IN_KEYS["generation"])},
            # Its path only (moving a clone reruns nothing); its sha256 is in the spec.
            "template": None if template is None else str(template),
        }

    # ------------------------------------------------------------------ generation quality
    @property
    def computes_quality(self) -> bool:
        """Both metric weight files are configured (else no quality job is planned)."""
        q = self.config["quality"]
        return bool(q["inception_weights"] and q["lpips_weights"])

    def _quality_spec(self, category: str, defect: str) -> dict:

        q = self.config["quality"]
        spec = _without(q, {"inception_weights", "lpips_weights", "batch_size"})
        for name in ("inception_weights", "lpips_weights"):
            if not Path(q[name]).is_file():
                raise ConfigError(f"quality.{name}", f"{q[name]} is not a file (see the README's 'Generation quality')")
            # The weights' content, not their path: moving the file reruns nothing.
            spec[f"{name.split('_')[0]}_sha256"] = sha256_file_cached(q[name])
        # KID's reference: the defect's real anomalies less its support images (whatever exclude_from_test says)
        excluded = sorted(self._test_relpath(category, defect, n) for n in self.support_files(category, defect) or ())
        spec.update(category=category, defect=defect, resize=self.config["resize"], excluded=excluded)
        return spec

    def _quality_upstream(self, category: str, defect: str) -> dict:
        return {"generation": ("generation", (category, defect)), "support": ("support", (category, defect))}

    def _quality_data_inputs(self, category: str, defect: str) -> dict:
        return {"dataset": self.dataset_key, "data": self._data_fingerprint(category, "defect", defect)}

    def _quality_runtime(self, category: str, defect: str) -> dict:
        q = self.config["quality"]
        return {**self._data_runtime(), **{k: q[k] for k in ("inception_weights", "lpips_weights", "batch_size")}}

    # ------------------------------------------------------------------ stage 3: detectors
    # Per-detector values that only the generated branch or the weak loss read: they go into
    # the spec as top-level (resolved) entries of the non-baseline variants only.
    _GENERATED_BRANCH_KEYS = ("tau", "generated_normal_prob", "augment_generated")

    def detector_tau(self, detector: str) -> float:
        """``detectors.<detector>.tau`` when set, else ``detectors.tau``."""
        det = self.config["detectors"]
        own = det[detector]["tau"]
        return float(det["tau"] if own is None else own)

    # Per-detector values that only a non-baseline DRAEM reads (its generated set).
    _GENERATED_SET_KEYS = {"draem": ("authors_sampling_quirk",), "destseg": ()}

    def detector_section(self, detector: str, variant: str) -> dict:
        """``detectors.<detector>`` with ``variant_overrides.<variant>`` applied (the overrides removed)."""
        section = dict(self.config["detectors"][detector])
        overrides = section.pop("variant_overrides").get(variant) or {}
        section.update(overrides)
        return section

    def _detector_spec(self, category: str, detector: str, variant: str) -> dict:
        det = self.config["detectors"]
        section = self.detector_section(detector, variant)
        # teacher_weights is where the teacher is (runtime); its content is the input "teacher"
        skip = set(self._GENERATED_BRANCH_KEYS) | set(self._GENERATED_SET_KEYS[detector]) | {"teacher_weights"}
        spec = {
            "category": category,
            "detector": detector,
            "variant": variant,
            "image_size": det["image_size"],
            "seed": det["seed"],
            "mixed_precision": det["mixed_precision"],
            "resize": self.config["resize"],
            detector: _without(section, skip),
        }
        if variant != "generated_only":
            spec["synthetic_source"] = det["synthetic_source"]
            if det["synthetic_source"] == "cutpaste":
                spec["cutpaste"] = det["cutpaste"]
        if variant != "baseline":
            spec.update(
                tau=self.detector_tau(detector),
                mix_prob=det["mix_prob"],
                weak_on_synthetic=det["weak_on_synthetic"],
                generated_normal_prob=det[detector]["generated_normal_prob"],
                augment_generated=det[detector]["augment_generated"],
                generated_per_image=self.images_per_normal(),
                **{k: det[detector][k] for k in self._GENERATED_SET_KEYS[detector]},
            )
        return spec

    def _detector_upstream(self, category: str, detector: str, variant: str) -> dict:
        if variant == "baseline":
            return {}
        return {f"generation/{d}": ("generation", (category, d)) for d in self.defects(category)}

    def _detector_data_inputs(self, category: str, detector: str, variant: str) -> dict:
        inputs = {"dataset": self.dataset_key, "data": self._data_fingerprint(category, "train")}
        if self.reads_textures(variant):
            inputs["textures"] = self.textures_key()
        if detector == "destseg":  # every variant loads the teacher
            inputs["teacher"] = self.teacher_key()
        return inputs

    def _detector_runtime(self, category: str, detector: str, variant: str) -> dict:
        det = self.config["detectors"]
        return {
            **self._data_runtime(),
            "checkpoint_every": det["checkpoint_every"],
            # where the files are; their content is in the inputs (moving a clone reruns nothing)
            "texture_source": det["texture_source"] if self.reads_textures(variant) else None,
            "teacher_weights": det["destseg"]["teacher_weights"] if detector == "destseg" else None,
        }

    def reads_textures(self, variant: str) -> bool:
        """Whether a detector of ``variant`` pastes textures (synthetic anomalies in DRAEM's recipe)."""
        return variant != "generated_only" and self.config["detectors"]["synthetic_source"] != "cutpaste"

    def textures_key(self) -> str:
        """The texture folder's fingerprint (every image below it: ``anogen.data.texture_files``), or
        ``photographs`` for the fallback (scikit-image's bundled photographs, no file of the user's)."""
        folder = self.config["detectors"]["texture_source"]
        if not folder:
            return "photographs"
        memo = ("textures", folder)
        if memo not in self.data_memo:
            self.data_memo[memo] = texture_fingerprint(folder)
        return self.data_memo[memo]

    def teacher_key(self) -> str:
        """The DeSTSeg teacher file's fingerprint: ``detectors.destseg.teacher_weights``, else the torch
        hub cache's ResNet18 as the job finds it, else ``random-init`` (no file)."""
        configured = self.config["detectors"]["destseg"]["teacher_weights"]
        memo = ("teacher", configured)
        if memo not in self.data_memo:
            path = configured or find_hub_resnet18()
            self.data_memo[memo] = "random-init" if path is None else file_fingerprint(path)
        return self.data_memo[memo]

    # ------------------------------------------------------------------ evaluation
    def _evaluation_spec(self, category: str, detector: str, variant: str) -> dict:
        spec = _without(self.config["evaluation"], _NOT_IN_KEYS["evaluation"])
        spec.update(
            category=category,
            detector=detector,
            variant=variant,
            exclude_from_test=self.config["support"]["exclude_from_test"],
            excluded=self.excluded_from_test(category),
            resize=self.config["resize"],
            image_interpolation=self.config["detectors"][detector]["image_interpolation"],
        )
        return spec

    def _evaluation_upstream(self, category: str, detector: str, variant: str) -> dict:
        return {"detector": ("detector", (category, detector, variant))}

    def _evaluation_data_inputs(self, category: str, detector: str, variant: str) -> dict:
        # Which images the support sets take out of the test set is in the spec (``excluded``),
        # not the support keys: a support mask fixed by hand reruns the chain that learns from
        # it, not the evaluation of the baselines that never saw it.
        return {"dataset": self.dataset_key, "data": self._data_fingerprint(category, "test")}

    def _evaluation_runtime(self, category: str, detector: str, variant: str) -> dict:
        return {**self._data_runtime(), "batch_size": self.config["evaluation"]["batch_size"]}

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
