"""Backbones (VAEs with one or more latent layers), their likelihood heads, training and checkpoint cache.

Detectors use the :class:`~ood_bench.models.base.Backbone` contract only; ``train_or_load`` gives them a
trained model, loaded from the checkpoint cache when the same training has run before.
"""

from ood_bench.models.base import Backbone, BoundTerms
from ood_bench.models.train_config import TrainConfig
from ood_bench.models.training import TrainedBackbone, TrainingStopped, train_or_load

__all__ = ["Backbone", "BoundTerms", "TrainConfig", "TrainedBackbone", "TrainingStopped", "train_or_load"]
