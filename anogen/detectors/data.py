"""Training sample streams of the stage-3 detectors.

A stream turns a step number into a batch, as a pure function of ``(seed, step)``: each
sample ``i`` of step ``s`` draws all its random numbers from
``numpy.random.default_rng([seed, s, i])``, and the normal image it starts from comes from a
per-epoch permutation of the training images seeded by ``(seed, epoch)`` (DataLoader-style
shuffling; the last batch of an epoch wraps around). A resumed run therefore sees exactly
the batches an uninterrupted run would, whatever the number of loader workers, and no
sampler state needs to be checkpointed.

Sources of a sample:

- *synthetic*: a normal training image with a Perlin/texture anomaly (DRAEM or DeSTSeg
  recipe, see ``synthetic.py``); the mask is exact;
- *synthetic* with ``synthetic_source="cutpaste"``: the same recipe with a CutPaste patch
  instead of the Perlin/texture blend (``synthetic.CutPasteSynthesizer``; Table 4);
- *generated*: an image of a stage-2 generation manifest, its **box** mask (a weak label)
  and, as the clean/reconstruction target, the normal image it was generated from. With
  probability ``generated_normal_prob`` the sample is instead that normal image itself with
  an empty mask (kind ``KIND_GENERATED_NORMAL``; the authors' DRAEM fork: 0.5, so that an
  'anogen' DRAEM batch is 25% generated, 25% synthetic and 50% normal; their DeSTSeg fork: 0).
  With ``augment_generated`` the (normal, generated, mask) triplet is rotated alike:
  DRAEM fork: 30% of triplets by an integer angle in [-90, 90] (black corners, bilinear
  images, nearest-neighbour mask); DeSTSeg fork: the category's rotation rule of its
  synthetic samples (``synthetic.destseg_angle``; grey 114 corners, bilinear images, the mask
  rotated bilinearly with 0 outside and left soft: the DeSTSeg trainer thresholds it at 0.5
  after resizing it to the output size, as the fork does). Both rotate about
  ``((size-1)/2, (size-1)/2)``; the DRAEM fork uses ``(128, 128)`` on 256 px (half a pixel off).

Variants (config ``detectors.variants``):

- ``baseline``: synthetic only, plain focal loss;
- ``anogen``: each sample is generated with probability ``mix_prob``, else synthetic;
  generated samples use the weak box loss (tau), synthetic ones too iff ``weak_on_synthetic``;
- ``generated_only``: generated samples only, weak box loss.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from anogen.data.interpolation import load_square_rgb
from anogen.detectors.perlin import rotate_array
from anogen.detectors.synthetic import (
    CutPasteSynthesizer,
    DestsegSynthesizer,
    DraemSynthesizer,
    destseg_angle,
)
from anogen.detectors.textures import TextureSource
from anogen.errors import DataError
from anogen.io import load_manifest, read_image, verify_file

log = logging.getLogger(__name__)

VARIANTS = ("baseline", "anogen", "generated_only")
DETECTORS = ("draem", "destseg")

KIND_NORMAL, KIND_SYNTHETIC, KIND_GENERATED, KIND_GENERATED_NORMAL = 0, 1, 2, 3
SYNTHETIC_SOURCES = ("draem", "cutpaste")
# The AnoGen DRAEM fork rotates this share of generated triplets by randint(-90, 90) degrees.
DRAEM_GENERATED_ROTATE_PROB = 0.3
DESTSEG_FILL = 114 / 255.0


def _seed_words(seed: int) -> int:
    return int(seed) & 0xFFFFFFFFFFFFFFFF


def sample_rng(seed: int, step: int, index: int) -> np.random.Generator:
    return np.random.default_rng([_seed_words(seed), int(step), int(index)])


# ----------------------------------------------------------------------------- image loading


def load_rgb(path: str | Path, size: int, resize: str, interpolation: str) -> np.ndarray:
    """uint8 size x size x 3 via ``anogen.data.interpolation.load_square_rgb``.

    ``resize`` (``anogen.data.geometry``, config ``resize``) makes a non-square image square
    first; ``interpolation`` (``detectors.<detector>.image_interpolation``) is the resize kernel.
    Generated images are at the size already, so only the normal training images depend on them.
    """
    return load_square_rgb(path, size, resize, interpolation)


def load_binary_mask(path: str | Path, size: int) -> np.ndarray:
    """uint8 size x size in {0, 1}; 0/255 and 0/1 encodings are both accepted."""
    mask = read_image(path, "L")
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    threshold = 127 if mask.max() > 1 else 0
    return (mask > threshold).astype(np.uint8)


# ----------------------------------------------------------------------------- generated sets


@dataclasses.dataclass(frozen=True)
class GeneratedItem:
    image: Path
    mask: Path
    source: Path
    manifest: Path
    name: str
    defect: str | None = None  # the generation spec's defect


# The authors' DRAEM fork drops these generated files with list.remove inside the loop over the
# same list (data_loader.py, MVTecDRAEMTrainDataset): category -> substring of the file name.
AUTHORS_REMOVED = {"capsule": "poke", "cable": "cable_swap"}


def authors_sampling_quirk(
    items: Sequence[GeneratedItem], category: str, seed: int
) -> tuple[list[GeneratedItem], dict[str, dict[str, Any]]]:
    """The generated items the authors' DRAEM fork keeps, and per defect ``{n, kept, fraction}``.

    Their list comes from ``os.listdir`` (an order of the file system's, random for this
    purpose): here a permutation seeded by ``seed``. Their loop ``for x in paths: if name in x:
    paths.remove(x)`` is run as written; a removal shifts the next entry under the iterator,
    which skips it, so of a run of k adjacent matching files floor(k/2) stay (about 17% of
    capsule/poke and 11% of cable/cable_swap). Other categories keep everything.
    """
    rng = np.random.default_rng([_seed_words(seed), 0x11D1])
    listing = [items[i] for i in rng.permutation(len(items))]
    removed_defect = AUTHORS_REMOVED.get(category)
    if removed_defect is not None:
        for x in listing:  # the authors' loop, on purpose: it mutates the list it iterates
            if x.defect == removed_defect:
                listing.remove(x)
    kept = {id(x) for x in listing}
    report: dict[str, dict[str, Any]] = {}
    for defect in sorted({str(x.defect) for x in items}):
        n = sum(1 for x in items if str(x.defect) == defect)
        k = sum(1 for x in items if str(x.defect) == defect and id(x) in kept)
        report[defect] = {"n": n, "kept": k, "fraction": k / n if n else 0.0}
    return [x for x in items if id(x) in kept], report


def _data_root_of(train_images: Sequence[Path], sources: list[tuple[Path, str, str]]) -> Path | None:
    """The one directory ``R`` for which ``R / source_image`` is a training image for every item.

    Exact, not a guess: a training image ``p`` admits ``R`` only when its last path components
    equal *all* of ``source_image``'s, and every item must admit the same single ``R``. None
    when every source is absolute (then no root is needed)."""
    roots: set[Path] | None = None
    for manifest, name, source in sources:
        rel = Path(source)
        if rel.is_absolute():
            continue
        k = len(rel.parts)
        admitted = {Path(*p.parts[:-k]) for p in train_images if len(p.parts) >= k and p.parts[-k:] == rel.parts}
        roots = admitted if roots is None else roots & admitted
        if not roots:
            raise DataError(
                manifest,
                f"item {name}: source_image '{source}' is not one of the training images (under one data root)",
            )
    if roots is not None and len(roots) > 1:
        raise DataError(sources[0][0], f"the source images fit several data roots: {sorted(map(str, roots))}")
    return None if roots is None else roots.pop()


def _first_per_image(mpath: Path, entries: list[dict], per_image: int) -> list[dict]:
    """The entries with ``index_in_image < per_image``: the first ``per_image`` generated images
    of every normal image (stage 2 makes them those of a run with N = ``per_image``)."""
    kept = [e for e in entries if int(e["index_in_image"]) < per_image]
    pool, got = Counter(e["source_image"] for e in entries), Counter(e["source_image"] for e in kept)
    for source, n_pool in pool.items():
        if got[source] < per_image:
            raise DataError(
                mpath,
                f"has {n_pool} generated images of {source} ({got[source]} with index_in_image < {per_image}), but the "
                f"detector reads generated_per_image={per_image}: generate with images_per_normal >= {per_image}",
            )
    return kept


def _manifest_entries(mpath: Path, manifest: dict, per_image: int | None) -> list[dict]:
    """A generation manifest's items (all, or the first ``per_image`` per normal image), fields checked."""
    required = ("image", "mask", "source_image") + (() if per_image is None else ("index_in_image",))
    entries = manifest.get("extra", {}).get("items", [])
    for entry in entries:
        missing = [f for f in required if f not in entry]
        if missing:
            raise DataError(mpath, f"generated item without '{missing[0]}' field")
    return entries if per_image is None else _first_per_image(mpath, entries, per_image)


def load_generated_items(
    manifests: Sequence[str | Path],
    train_images: Sequence[str | Path],
    data_root: str | Path | None,
    per_image: int | None = None,
) -> list[GeneratedItem]:
    """Every item of every generation manifest; each image and mask is sha256-verified.

    ``per_image`` (a detector spec's ``generated_per_image``, the paper's N): only the items
    with ``index_in_image < per_image``, the first N per normal image; a normal image with
    fewer raises ``DataError`` naming the manifest. None: every item.

    An item's ``source_image`` is data-root-relative (``anogen.generation.run``); it must be one
    of ``train_images`` (``data_root / source_image``), else ``DataError`` naming the manifest
    and the item. ``data_root=None``: the root that makes every item a training image, if
    there is exactly one (``_data_root_of``). A damaged or missing cached file raises
    ``IntegrityError`` naming it.
    """
    train = [Path(p) for p in train_images]
    entries: list[tuple[Path, dict, Path, Path]] = []
    manifests_spec: dict[Path, dict] = {}
    for m in manifests:
        mpath = Path(m)
        if mpath.is_dir():
            mpath = mpath / "manifest.json"
        manifest = load_manifest(mpath)
        manifests_spec[mpath] = manifest.get("spec") or {}
        for entry in _manifest_entries(mpath, manifest, per_image):
            image = verify_file(mpath, entry["image"], manifest)
            entries.append((mpath, entry, image, verify_file(mpath, entry["mask"], manifest)))
    if data_root is None:
        data_root = _data_root_of(train, [(m, e["image"], e["source_image"]) for m, e, _, _ in entries])
    known = set(train)
    items: list[GeneratedItem] = []
    for mpath, entry, image, mask in entries:
        source = Path(data_root or "") / entry["source_image"]
        if source not in known:
            raise DataError(
                mpath,
                f"item {entry['image']}: source_image '{entry['source_image']}' ({source}) is not one of the training images",
            )
        defect = manifests_spec.get(mpath, {}).get("defect")
        items.append(
            GeneratedItem(image=image, mask=mask, source=source, manifest=mpath, name=entry["image"], defect=defect)
        )
    return items


# ----------------------------------------------------------------------------- the stream


class TrainStream:
    """Batches for step ``s``: ``stream.batch(s)`` (see the module docstring)."""

    def __init__(
        self,
        *,
        detector: str,
        variant: str,
        image_size: int,
        seed: int,
        batch_size: int,
        train_images: Sequence[str | Path],
        generated: Sequence[GeneratedItem],
        textures: TextureSource | None,
        mix_prob: float | None,
        weak_on_synthetic: bool | None,
        generated_normal_prob: float | None,
        augment_generated: bool | None,
        synthetic_source: str | None,
        resize: str,
        interpolation: str,
        destseg_rotation: tuple[bool, float] = (True, 5.0),
        cutpaste: dict[str, Any] | None = None,
    ):
        """The config values of the generated branch (``mix_prob``, ``weak_on_synthetic``,
        ``generated_normal_prob``, ``augment_generated``) are None for a baseline, and
        ``synthetic_source`` for ``generated_only``, as in ``Plan.spec("detector", ...)``;
        ``destseg_rotation``: the category's ``synthetic.destseg_rotation_for``."""
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}")
        self.detector, self.variant = detector, variant
        self.size, self.seed, self.batch_size = int(image_size), int(seed), int(batch_size)
        self._generated_branch(variant, mix_prob, weak_on_synthetic, generated_normal_prob, augment_generated)
        self.destseg_rotation = (bool(destseg_rotation[0]), float(destseg_rotation[1]))
        self.train_images = [Path(p) for p in train_images]
        if not self.train_images:
            raise DataError("<train images>", "no normal training images given")
        self.generated = list(generated)
        if variant != "baseline" and not self.generated:
            raise DataError(
                "<generated manifests>",
                f"variant '{variant}' needs generated anomalies, but the generation manifests list no items",
            )
        self.synth = None if variant == "generated_only" else self._synthesizer(textures, synthetic_source, cutpaste)
        # Normal images are small at training size: keep them all in memory.
        self.resize, self.interpolation = resize, interpolation
        self._normals = [load_rgb(p, self.size, resize, interpolation) for p in self.train_images]
        self._by_path = {str(p): i for i, p in enumerate(self.train_images)}
        self._extra_sources: dict[str, np.ndarray] = {}
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _generated_branch(self, variant, mix_prob, weak_on_synthetic, generated_normal_prob, augment_generated):
        values = {
            "mix_prob": mix_prob,
            "weak_on_synthetic": weak_on_synthetic,
            "generated_normal_prob": generated_normal_prob,
            "augment_generated": augment_generated,
        }
        if variant == "baseline":
            # Never read: a baseline draws no generated samples and marks none weak.
            self.mix_prob = self.weak_on_synthetic = self.generated_normal_prob = self.augment_generated = None
            return
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise ValueError(f"variant {variant!r} needs {', '.join(missing)}")
        self.mix_prob, self.weak_on_synthetic = float(mix_prob), bool(weak_on_synthetic)
        self.generated_normal_prob = float(generated_normal_prob)
        self.augment_generated = bool(augment_generated)

    def _synthesizer(self, textures: TextureSource | None, synthetic_source: str | None, cutpaste: dict | None):
        if synthetic_source not in SYNTHETIC_SOURCES:
            raise ValueError(f"unknown synthetic_source {synthetic_source!r}")
        if textures is None and synthetic_source == "draem":
            raise ValueError("synthetic anomalies need a TextureSource")
        if self.detector == "draem":
            synth: Any = DraemSynthesizer(textures)
        else:
            r90, small = self.destseg_rotation
            synth = DestsegSynthesizer(textures, rotate_90=r90, random_rotate=small)
        if synthetic_source == "cutpaste":
            synth = CutPasteSynthesizer(synth, **(cutpaste or {}))
        return synth

    # -- budget helpers
    @property
    def n_train(self) -> int:
        return len(self.train_images)

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_train / self.batch_size))

    def _normal_index(self, step: int, i: int) -> int:
        spe = self.steps_per_epoch()
        epoch, within = divmod(step, spe)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng([_seed_words(self.seed), int(epoch), 0x5EED])
            self._perm_cache = (epoch, rng.permutation(self.n_train))
        return int(self._perm_cache[1][(within * self.batch_size + i) % self.n_train])

    def _source_image(self, path: Path) -> np.ndarray:
        idx = self._by_path.get(str(path))
        if idx is not None:
            return self._normals[idx]
        key = str(path)
        if key not in self._extra_sources:
            self._extra_sources[key] = load_rgb(path, self.size, self.resize, self.interpolation)
        return self._extra_sources[key]

    # -- samples
    def sample(self, step: int, i: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, step, i)
        use_generated = self.variant == "generated_only" or (self.variant == "anogen" and rng.random() < self.mix_prob)
        if use_generated:
            return self._generated_sample(rng)
        normal = self._normals[self._normal_index(step, i)]
        s = self.synth(normal, rng)
        weak = self.variant == "anogen" and self.weak_on_synthetic
        return dict(
            image=s.image,
            clean=s.clean,
            mask=s.mask,
            weak=weak,
            anomalous=s.is_anomalous,
            kind=KIND_SYNTHETIC if s.is_anomalous else KIND_NORMAL,
        )

    def _generated_sample(self, rng: np.random.Generator) -> dict[str, Any]:
        item = self.generated[int(rng.integers(0, len(self.generated)))]
        clean = self._source_image(item.source).astype(np.float32) / 255.0
        # Drawn whatever the probability, so later draws do not depend on it.
        plain_normal = bool(rng.random() < self.generated_normal_prob)
        if plain_normal:
            image, mask = clean.copy(), np.zeros((self.size, self.size), np.uint8)
        else:
            image = load_rgb(item.image, self.size, self.resize, self.interpolation).astype(np.float32) / 255.0
            mask = load_binary_mask(item.mask, self.size)
        if self.augment_generated:
            image, clean, mask = self._augment_generated(image, clean, mask, rng)
        anomalous = bool(mask.any())
        return dict(
            image=image,
            clean=clean,
            mask=mask,
            weak=True,
            anomalous=anomalous,
            kind=KIND_GENERATED_NORMAL if plain_normal else KIND_GENERATED,
        )

    def _augment_generated(
        self, image: np.ndarray, clean: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rotate (generated image, normal image, mask) alike (see the module docstring)."""
        if self.detector == "draem":
            do_rotate = bool(rng.random() < DRAEM_GENERATED_ROTATE_PROB)
            angle = float(rng.integers(-90, 91))
            if not do_rotate or angle == 0.0:
                return image, clean, mask
            return (
                rotate_array(image, angle, fill=0.0),
                rotate_array(clean, angle, fill=0.0),
                rotate_array(mask, angle, fill=0, interpolation=cv2.INTER_NEAREST),
            )
        angle = destseg_angle(rng, *self.destseg_rotation)
        if angle == 0.0:
            return image, clean, mask
        return (
            rotate_array(image, angle, fill=DESTSEG_FILL),
            rotate_array(clean, angle, fill=DESTSEG_FILL),
            rotate_array(mask.astype(np.float32), angle, fill=0.0),
        )

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        samples = [self.sample(step, i) for i in range(self.batch_size)]

        def stack_img(key: str) -> torch.Tensor:
            arr = np.stack([s[key] for s in samples]).astype(np.float32)
            return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

        return {
            "image": stack_img("image"),
            "clean": stack_img("clean"),
            "mask": torch.from_numpy(np.stack([s["mask"] for s in samples]).astype(np.float32))[:, None],
            "weak": torch.tensor([s["weak"] for s in samples], dtype=torch.bool),
            "anomalous": torch.tensor([s["anomalous"] for s in samples], dtype=torch.bool),
            "kind": torch.tensor([s["kind"] for s in samples], dtype=torch.int64),
            "step": torch.tensor(step, dtype=torch.int64),
        }


class StepDataset(torch.utils.data.Dataset):
    """``dataset[i]`` is the batch of step ``start + i`` (for a DataLoader with workers)."""

    def __init__(self, stream: TrainStream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, int(start), int(stop)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.stream.batch(self.start + int(index))


def make_loader(
    stream: TrainStream, start: int, stop: int, num_workers: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader over steps ``start..stop-1``. Workers are forked (they never touch CUDA;
    torch gives each one intra-op thread). OpenCV's thread pool does not survive a fork, so
    with workers it is switched to one thread in this process *before* they are forked
    (calling setNumThreads inside a forked child can wait forever on the parent's pool)."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        import multiprocessing

        cv2.setNumThreads(1)
        kwargs.update(
            prefetch_factor=4,
            persistent_workers=False,
            multiprocessing_context=multiprocessing.get_context("fork"),
        )
    return torch.utils.data.DataLoader(
        StepDataset(stream, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **kwargs,
    )
