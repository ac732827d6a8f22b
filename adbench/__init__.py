"""adbench: one datamodule, one evaluator and pluggable methods for visual anomaly detection."""

__version__ = "0.1.0"
