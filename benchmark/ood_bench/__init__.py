"""ood-bench: a benchmark harness for unsupervised OOD detection with deep generative models."""

__version__ = "0.1.0"
