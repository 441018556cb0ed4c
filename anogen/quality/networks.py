"""The two feature networks of the generation-quality metrics, built offline from the user's files.

torch-fidelity's ``FeatureExtractorInceptionV3`` and lpips' ``LPIPS`` both download their weights
when none are given. Here neither ever does: the Inception file is checked to be a plain state dict
(``torch.load(weights_only=True)``) before torch-fidelity reads it, and LPIPS is built with a
random backbone (``pnet_rand=True``) whose layers then get the ``features.*`` tensors of the
user's torchvision file; LPIPS's own linear layers ship inside the lpips package.

A weights file written by :func:`write_random_weights` (tests, benchmarks) has a marker file
beside it, and every number computed with it carries ``provenance.RANDOM_QUALITY_WEIGHTS``.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from anogen import provenance
from anogen.errors import ConfigError, DataError
from anogen.io import sha256_file_cached

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's name of the TF-compatible extractor
INCEPTION_FEATURES = ("logits_unbiased", "2048")  # IS from the first, KID from the second


@dataclass(frozen=True)
class WeightsInfo:
    """What the CSV records of one weights file."""

    path: str
    sha256: str
    random: bool


def random_marker(path: str | Path) -> Path:
    return Path(f"{path}.{provenance.RANDOM_QUALITY_MARKER_SUFFIX}")


def weights_info(path: str | Path | None, key: str) -> WeightsInfo:
    """Check that ``path`` (config ``key``) is a file; its sha256 and whether it is random."""
    if not path:
        raise ConfigError(key, "not set: the generation-quality metrics need it (never downloaded; see README)")
    if not Path(path).is_file():
        raise DataError(path, f"not a file ({key}); see the README's 'Generation quality' section")
    random = random_marker(path).is_file()
    if random:
        provenance.record(provenance.RANDOM_QUALITY_WEIGHTS)
    return WeightsInfo(str(path), sha256_file_cached(path), random)


def _state_dict(path: str | Path, key: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling problem is the file's
        raise DataError(path, f"{key}: not a plain PyTorch state dict ({error})") from None
    if not isinstance(state, dict):
        raise DataError(path, f"{key}: expected a state dict, found {type(state).__name__}")
    return state


def load_inception(path: str | Path, device: str = "cpu"):
    """torch-fidelity's Inception-v3 (``inception-v3-compat``) with the weights in ``path``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    _state_dict(path, "quality.inception_weights")  # weights_only first: torch-fidelity unpickles fully
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            net = FeatureExtractorInceptionV3(
                INCEPTION_NAME, list(INCEPTION_FEATURES), feature_extractor_weights_path=str(path)
            )
    except RuntimeError as error:
        raise DataError(path, f"quality.inception_weights: not torch-fidelity's Inception-v3 ({error})") from None
    return net.to(device)


def load_lpips(path: str | Path, net: str, device: str = "cpu"):
    """``lpips.LPIPS(net)`` whose backbone layers come from the torchvision file ``path``."""
    import lpips

    state = _state_dict(path, "quality.lpips_weights")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise DataError(path, f"quality.lpips_weights: no features.* tensors (a torchvision {net} file is expected)")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's note on lpips' legacy pretrained=
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    loaded = set()
    for slice_ in model.net.children():
        for index, layer in slice_.named_children():
            own = {k.split(".", 1)[1]: v for k, v in features.items() if k.split(".", 1)[0] == index}
            try:
                layer.load_state_dict(own)  # strict: a layer with parameters needs all of them
            except RuntimeError as error:
                raise DataError(path, f"quality.lpips_weights: not a torchvision {net} ({error})") from None
            loaded.update(f"{index}.{k}" for k in own)
    missing = set(features) - loaded
    if missing:
        raise DataError(path, f"quality.lpips_weights: tensors LPIPS-{net} does not use: {sorted(missing)[:4]}")
    return model.eval().requires_grad_(False).to(device)


def write_random_weights(inception_path: str | Path, lpips_path: str | Path, net: str, *, seed: int) -> None:
    """Randomly initialised weight files in the expected formats, each marked random (tests, benchmarks)."""
    import torch
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    empty = Path(inception_path).with_suffix(".empty")
    torch.save({}, empty)
    # Built without loading anything: the empty file stands in, load_state_dict is skipped.
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        inception = FeatureExtractorInceptionV3(INCEPTION_NAME, list(INCEPTION_FEATURES), str(empty))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
        empty.unlink()
    _variance_preserving(inception)  # PyTorch's default init shrinks activations to ~1e-8 over 90 layers
    torch.save(inception.state_dict(), inception_path)
    builders = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16}
    builders["squeeze"] = torchvision.models.squeezenet1_1
    backbone = builders[net](weights=None)
    _variance_preserving(backbone)
    torch.save({f"features.{k}": v for k, v in backbone.features.state_dict().items()}, lpips_path)
    for path in (inception_path, lpips_path):
        random_marker(path).write_text(json.dumps({"random": True, "seed": seed}) + "\n", encoding="utf-8")


def _variance_preserving(module) -> None:
    """Kaiming-normal convolutions and linear layers, so random features still tell images apart."""
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
