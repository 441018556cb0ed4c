"""Numeric precision of the stage-3 detectors (config ``detectors.mixed_precision``).

The official DRAEM and DeSTSeg code, and the authors' AnoGen forks of both, train and test
in float32. ``"no"`` (the default) does the same. ``"auto"`` autocasts the forward passes
on CUDA to bfloat16 where the GPU supports it, else to float16 (with loss scaling);
``"bf16"`` / ``"fp16"`` force one of the two. Losses are always computed in float32. On a
CPU every mode runs in float32, and the manifest records the precision actually used.
The choice itself is made in ``anogen.devices`` (one place for every stage).
"""

from anogen.devices import PRECISION_MODES as MODES
from anogen.devices import autocast as detector_autocast
from anogen.devices import effective_precision, grad_scaler

__all__ = ["MODES", "detector_autocast", "effective_precision", "grad_scaler"]
