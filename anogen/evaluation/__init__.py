"""Stage 4: evaluation of trained detectors (exact streaming metrics, panels, summary tables).

``metrics`` is dependency-light (numpy, scipy; torch/PIL only for resizing) and is the one
module every stage uses for AU-ROC, AU-PR and AUPRO. ``evaluate`` (torch) is imported
lazily so that importing the metrics does not pull it in.
"""

from anogen.evaluation.metrics import (
    MetricUndefinedWarning,
    PixelMetricAccumulator,
    image_aupr,
    image_auroc,
    image_metrics,
    pixel_metrics,
)
from anogen.evaluation.summary import summarize

__all__ = [
    "MetricUndefinedWarning",
    "PixelMetricAccumulator",
    "evaluate_detector",
    "image_aupr",
    "image_auroc",
    "image_metrics",
    "pixel_metrics",
    "summarize",
]


def __getattr__(name: str):
    if name == "evaluate_detector":
        from anogen.evaluation.evaluate import evaluate_detector  # loads torch: not with the metrics

        return evaluate_detector
    raise AttributeError(f"module 'anogen.evaluation' has no attribute {name!r}")
