"""Load the published DRAEM checkpoints (github.com/VitjanZ/DRAEM) into ``DraemNet``.

The official training script saves two state dicts per category with ``torch.save``:
``<run>.pckl`` (``ReconstructiveSubNetwork(in_channels=3, out_channels=3)``) and
``<run>_seg.pckl`` (``DiscriminativeSubNetwork(in_channels=6, out_channels=2)``). Their
module names (official ``model_unet.py``) map one to one onto ours (``network.py``); the
Sequential indices inside each block are the same (conv 0, BN 1, ReLU 2, conv 3, BN 4;
upsampling blocks: Upsample 0, conv 1, BN 2):

=====================================  ===================================
official reconstructive                ours
=====================================  ===================================
``encoder.block{k}.*`` (k = 1..5)      ``recon.encoder.stages.{k-1}.*``
``decoder.up{k}.*`` (k = 1..4)         ``recon.ups.{k-1}.*``
``decoder.db{k}.*`` (k = 1..4)         ``recon.decs.{k-1}.*``
``decoder.fin_out.0.*``                ``recon.out.*``
official discriminative
``encoder_segment.block{k}.*`` (1..6)  ``disc.encoder.stages.{k-1}.*``
``decoder_segment.up_b.*``             ``disc.ups.0.*``
``decoder_segment.up{k}.*`` (1..4)     ``disc.ups.{k}.*``
``decoder_segment.db_b.*``             ``disc.decs.0.*``
``decoder_segment.db{k}.*`` (1..4)     ``disc.decs.{k}.*``
``decoder_segment.fin_out.0.*``        ``disc.out.*``
=====================================  ===================================

The base widths are read from the checkpoints (``block1.0.weight`` has ``w`` outputs).
Files are read with ``torch.load(weights_only=True)``: plain tensors only, no code runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from anogen.detectors.draem.network import DraemNet
from anogen.errors import DataError

__all__ = ["official_to_ours", "ours_to_official", "load_official_draem"]

_RECON_RULES = [
    (r"^encoder\.block(\d)\.", lambda m: f"recon.encoder.stages.{int(m.group(1)) - 1}."),
    (r"^decoder\.up(\d)\.", lambda m: f"recon.ups.{int(m.group(1)) - 1}."),
    (r"^decoder\.db(\d)\.", lambda m: f"recon.decs.{int(m.group(1)) - 1}."),
    (r"^decoder\.fin_out\.0\.", lambda m: "recon.out."),
]
_SEG_RULES = [
    (r"^encoder_segment\.block(\d)\.", lambda m: f"disc.encoder.stages.{int(m.group(1)) - 1}."),
    (r"^decoder_segment\.up_b\.", lambda m: "disc.ups.0."),
    (r"^decoder_segment\.up(\d)\.", lambda m: f"disc.ups.{int(m.group(1))}."),
    (r"^decoder_segment\.db_b\.", lambda m: "disc.decs.0."),
    (r"^decoder_segment\.db(\d)\.", lambda m: f"disc.decs.{int(m.group(1))}."),
    (r"^decoder_segment\.fin_out\.0\.", lambda m: "disc.out."),
]
_INVERSE_RULES = [
    (r"^recon\.encoder\.stages\.(\d)\.", lambda m: f"encoder.block{int(m.group(1)) + 1}.", "recon"),
    (r"^recon\.ups\.(\d)\.", lambda m: f"decoder.up{int(m.group(1)) + 1}.", "recon"),
    (r"^recon\.decs\.(\d)\.", lambda m: f"decoder.db{int(m.group(1)) + 1}.", "recon"),
    (r"^recon\.out\.", lambda m: "decoder.fin_out.0.", "recon"),
    (r"^disc\.encoder\.stages\.(\d)\.", lambda m: f"encoder_segment.block{int(m.group(1)) + 1}.", "seg"),
    (r"^disc\.ups\.0\.", lambda m: "decoder_segment.up_b.", "seg"),
    (r"^disc\.ups\.(\d)\.", lambda m: f"decoder_segment.up{int(m.group(1))}.", "seg"),
    (r"^disc\.decs\.0\.", lambda m: "decoder_segment.db_b.", "seg"),
    (r"^disc\.decs\.(\d)\.", lambda m: f"decoder_segment.db{int(m.group(1))}.", "seg"),
    (r"^disc\.out\.", lambda m: "decoder_segment.fin_out.0.", "seg"),
]


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            return repl(m) + key[m.end() :]
    return None


def _strip_module(state: dict) -> dict:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def official_to_ours(
    recon_state: dict[str, torch.Tensor], seg_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One ``DraemNet`` state dict from the two official ones; unknown keys raise KeyError."""
    out: dict[str, torch.Tensor] = {}
    for state, rules, what in (
        (recon_state, _RECON_RULES, "reconstructive"),
        (seg_state, _SEG_RULES, "discriminative"),
    ):
        for key, value in _strip_module(state).items():
            new = _rename(key, rules)
            if new is None:
                raise KeyError(f"'{key}' is not a key of the official DRAEM {what} sub-network")
            out[new] = value
    return out


def ours_to_official(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse: ``(reconstructive, discriminative)`` state dicts with the official names."""
    recon: dict[str, torch.Tensor] = {}
    seg: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, repl, part in _INVERSE_RULES:
            m = re.match(pattern, key)
            if m:
                (recon if part == "recon" else seg)[repl(m) + key[m.end() :]] = value
                break
        else:
            raise KeyError(f"'{key}' is not a key of DraemNet")
    return recon, seg


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise DataError(path, f"cannot read a DRAEM checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise DataError(path, "not a state dict")
    return state


def load_official_draem(recon_path: str | Path, seg_path: str | Path) -> DraemNet:
    """A ``DraemNet`` (eval mode, CPU) holding the official checkpoints' weights."""
    recon_path, seg_path = Path(recon_path), Path(seg_path)
    recon_state, seg_state = _read(recon_path), _read(seg_path)
    try:
        recon_w = int(_strip_module(recon_state)["encoder.block1.0.weight"].shape[0])
    except KeyError as exc:
        raise DataError(recon_path, "no encoder.block1.0.weight: not a DRAEM reconstructive checkpoint") from exc
    try:
        seg_w = int(_strip_module(seg_state)["encoder_segment.block1.0.weight"].shape[0])
    except KeyError as exc:
        raise DataError(seg_path, "no encoder_segment.block1.0.weight: not a DRAEM discriminative checkpoint") from exc
    model = DraemNet(recon_w, seg_w)
    try:
        model.load_state_dict(official_to_ours(recon_state, seg_state), strict=True)
    except (KeyError, RuntimeError) as exc:
        raise DataError(f"{recon_path} + {seg_path}", f"weights do not fit DRAEM ({exc})") from exc
    return model.eval()
