"""AnoGen: few-shot anomaly-driven generation for anomaly classification and segmentation."""

__version__ = "0.1.0"
