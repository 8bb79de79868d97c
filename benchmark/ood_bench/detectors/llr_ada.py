"""Adaptive likelihood ratio LLR^ada of Li et al. (seed 000 eq. 11; spec §5).

For a hierarchical VAE with L latent layers:

``LLR^ada(x) = sum_{k=0}^{L-1} w_k(x) * (LLR^{>k}(x) - LLR^{>k-1}(x))``, with ``LLR^{>-1} = 0``, ``w_0 = 1`` and
``w_k = log p(x|z_{>k}) / log p(x|z_{>k-1})`` for k >= 1 (seed 000: R(x, z_{>k}) = 1 / log p(x|z_{>k})).

Estimators (seed 000 does not spell them out; these are the harness's, spec §5):

* ``L(x)``: the S-sample IWAE bound L_S over the full posterior (shared with ``likelihood`` and ``llr``);
* ``L^{>k}(x)``: one pass with z_{>k} sampled from the posterior and z_{<=k} at the conditional-prior means
  (k = 0: the ordinary single-sample ELBO), exactly ``llr``'s ``lk{k}`` estimate;
* ``LLR^{>k} = L_S - L^{>k}`` for k >= 1, ``llr``'s ``llr_k{k}``;
* ``LLR^{>0}``: zero, as in seed 000, where L^{>0} *is* the likelihood L, so the k = 0 term vanishes
  (``k0_term="zero"``, the default). ``k0_term="iwae_gap"`` uses this harness's estimators literally,
  LLR^{>0} = L_S - ELBO, a small positive gap (the only form before version 2; a labelled variant);
* ``log p(x|z_{>k})``: the likelihood term log p(x|z_1) of that same L^{>k} pass (k = 0: z_1 ~ q), so the
  weights and LLR^{>k} of one k come from the same random draws.

Outputs: ``llr_ada`` and the ``llr_k{k}`` (k >= 1) it is built from, higher = more OOD. Every estimate is
memoised per backbone, so after ``llr`` ran on the same backbone in the same run only the combination is
computed here. The weights need log p(x|.) < 0, true for probability-mass heads (Bernoulli on binarised
images, discretised logistic mixture); backbones with a continuous density head are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ood_bench.detectors import estimators
from ood_bench.detectors.base import Batch, Detector, hierarchy_problem
from ood_bench.params import PositiveInt, checked

# log p(x|.) of a probability mass is < 0; this only guards a float rounding to exactly 0.
_MAX_LOG_PX = -1e-12


def adaptive_weights(log_px: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``w_0 = 1`` and ``w_k = LL^{>k} / LL^{>k-1}`` per example, from the reconstruction terms LL^{>k}."""
    ll = [np.minimum(np.asarray(v, dtype=np.float64), _MAX_LOG_PX) for v in log_px]
    return [np.ones_like(ll[0])] + [ll[k] / ll[k - 1] for k in range(1, len(ll))]


def adaptive_ratio(llr: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> np.ndarray:
    """``sum_k w_k (LLR^{>k} - LLR^{>k-1})`` with ``LLR^{>-1} = 0`` (seed 000 eq. 11)."""
    total = np.zeros_like(np.asarray(llr[0], dtype=np.float64))
    previous = np.zeros_like(total)
    for ratio, weight in zip(llr, weights, strict=True):
        total = total + weight * (ratio - previous)
        previous = ratio
    return total


class AdaptiveLikelihoodRatio(Detector):
    """LLR^ada on any hierarchical backbone (plain or informative HVAE); see the module docstring.

    Parameters
    ----------
    iwae_samples:
        S for the IWAE estimate of L (seed 001 / 000 use 1000 importance samples).
    k0_term:
        ``zero`` (seed 000: LLR^{>0} = 0) or ``iwae_gap`` (LLR^{>0} = L_S - ELBO).
    """

    name = "llr_ada"
    version = "2"

    @checked
    def __init__(self, iwae_samples: PositiveInt = 16, k0_term: Literal["zero", "iwae_gap"] = "zero"):
        self.iwae_samples, self.k0_term = iwae_samples, k0_term

    @classmethod
    def backbone_problem(cls, backbone) -> str | None:
        problem = hierarchy_problem(backbone)
        head = getattr(backbone, "head", None)
        if problem is None and not getattr(head, "is_probability_mass", False):
            head_name = type(head).__name__ if head is not None else "no `head` attribute"
            problem = (f"its likelihood head is {head_name}, but the adaptive weights divide "
                       f"log p(x|z_{{>k}}) by log p(x|z_{{>k-1}}), which is only meaningful when log p(x|.) is "
                       f"strictly negative, i.e. for a probability mass such as the Bernoulli or discretised "
                       f"logistic mixture heads (a head declares it with `is_probability_mass = True`); use one "
                       f"of those likelihoods for this backbone, or score it with `llr` instead")
        return problem

    def outputs(self) -> list[str]:
        return ["llr_ada"] + [f"llr_k{k}" for k in range(1, self.backbone_.num_latent_layers)]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        model = self.backbone_
        x = self._model_input(batch)
        terms = [estimators.bound_terms(model, batch, x, k) for k in range(model.num_latent_layers)]
        iwae = estimators.iwae_bound(model, batch, x, self.iwae_samples)
        llr = [iwae - bound for bound, _ in terms]
        if self.k0_term == "zero":
            llr[0] = np.zeros_like(llr[0])
        out = {"llr_ada": adaptive_ratio(llr, adaptive_weights([log_px for _, log_px in terms]))}
        out.update({f"llr_k{k}": llr[k] for k in range(1, model.num_latent_layers)})
        return out
