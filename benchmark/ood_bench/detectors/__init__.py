"""Detectors: each turns a backbone and an example into a per-example OOD score (higher = more OOD)."""

from ood_bench.detectors.base import Batch, Detector

__all__ = ["Batch", "Detector"]
