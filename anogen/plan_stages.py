"""The per-stage builders of ``anogen.plan.Plan``: for each keyed stage, what its job reads.

Every stage has four builders, which ``Plan``'s generic entries (``spec``, ``upstream``,
``inputs``, ``key``, ``job``) dispatch to: ``_<stage>_spec`` (the hashed config values),
``_<stage>_upstream`` (the keyed artifacts it reads, as (stage, wildcard values)),
``_<stage>_data_inputs`` (the data set, data fingerprints, model) and ``_<stage>_runtime``
(values outside the key). ``StageBuilders`` is a base class of ``Plan``: the builders read the
plan's data and model answers (categories, support files, fingerprints, the model's key).
"""

from __future__ import annotations

from pathlib import Path

from anogen.data.fingerprint import file_fingerprint
from anogen.data.texture_files import texture_fingerprint
from anogen.errors import ConfigError
from anogen.io import sha256_file_cached
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


class StageBuilders:
    """``_<stage>_spec`` / ``_upstream`` / ``_data_inputs`` / ``_runtime`` of every keyed stage."""

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
