"""Training objectives of the plain VAE beyond the ELBO: BPVAE's two priors and negative sampling.

``objective`` (a VAE parameter) picks one; ``objective_params`` holds its settings. All terms are per
example in nats, with analytic Gaussian KL divergences, then averaged over the minibatch.

* ``elbo``: ``-[E_q log p(x|z) - KL(q(z|x) || N(0, I))]``.
* ``bpvae`` (seed 002, eq. 5; spec §8): basic prior ``p_b = N(0, σ_b² I)`` for the in-distribution batch x
  (σ_b = 1, the spec's default, so p_b is the VAE's own prior and every score of the backbone is under p_b),
  simple prior ``p_s = N(0, σ_s² I)`` for a batch y of the "simple" auxiliary set, shared encoder/decoder:
  ``-[E log p(x|z) - KL(q(z|x) || p_b)] - [E log p(y|z) - KL(q(z|y) || p_s)]``. Eq. 5 as printed uses p_b in
  both KL terms; its text says the s-prior models the simple data, so p_s is the default and
  ``literal_eq5: true`` reproduces the printed equation (then the objective is the ELBO on both sets).
* ``negative_sampling`` (seed 004; spec §9): ``-ELBO(x) + KL(q(z|x̄) || N(c·1, I))`` for a negative batch x̄
  (no reconstruction term for negatives). ``negatives``: ``aux`` (the backbone's auxiliary set),
  ``uniform`` (i.i.d. uniform 8-bit pixels, prepared like data), ``generated`` (the decoder's mean image for
  z ~ p(z); the encoder learns to send it to the negative prior, and with ``generator_term`` the decoder
  also receives ``KL(q(z|G(z)) || p(z))`` through a frozen encoder, our reading of the adversarial game the
  seed describes in one sentence, spec §14.9). The seed alternates encoder and decoder updates; here one
  optimiser step updates both, the generator term reaching only the decoder.

The model is the plain VAE of :mod:`ood_bench.models.vae`: ``posterior``, ``decode``, ``log_px``,
``kl_penalty`` (its free-bits convention), ``latent_shapes``, ``prepare``, ``likelihood`` and ``encoder``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ood_bench.models import gaussian
from ood_bench.models.base import frozen
from ood_bench.params import STRICT, Flag, Number, PositiveNumber, config_from_params

OBJECTIVES = ("elbo", "bpvae", "negative_sampling")


@dataclass(frozen=True)
class ObjectiveParams:
    """Settings of the objectives (``objective_params`` of the VAE; each objective reads its own).

    ``simple_prior_std`` σ_s (BPVAE; seed 002 gives no value, the spec's sweep is σ_s ∈ {0.1, 0.3, 0.5}
    with σ_b = 1); ``literal_eq5``; ``negatives``, ``negative_shift`` c (seed 004: 8 for 28×28 grey, 25
    for 32×32 colour) and ``generator_term`` (negative sampling).
    """

    __pydantic_config__ = STRICT

    simple_prior_std: PositiveNumber = 0.5
    literal_eq5: Flag = False
    negatives: Literal["aux", "uniform", "generated"] = "aux"
    negative_shift: Number = 8.0
    generator_term: Flag = True


OWNERS = {"simple_prior_std": "bpvae", "literal_eq5": "bpvae", "negatives": "negative_sampling",
          "negative_shift": "negative_sampling", "generator_term": "negative_sampling"}
"""Which objective each ``objective_params`` field belongs to."""


def own_params(objective: str, cfg: ObjectiveParams) -> dict[str, Any]:
    """The fields of ``cfg`` that ``objective`` uses: what a checkpoint records, and what loads it back."""
    return {k: v for k, v in asdict(cfg).items() if OWNERS[k] == objective}


def validate(objective: str, params: dict[str, Any]) -> ObjectiveParams:
    """The settings of ``objective``; ValueError names an unknown objective, key or bad value."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    cfg = config_from_params(ObjectiveParams, params or {}, "objective")
    foreign = sorted(k for k in params or {} if OWNERS[k] != objective)
    if foreign:
        raise ValueError(f"objective_params {', '.join(foreign)} do not apply to objective {objective!r}")
    return cfg


def check_likelihood(objective: str, cfg: ObjectiveParams, likelihood: str) -> None:
    """Generated negatives are the decoder's Bernoulli means; other heads have no such image here."""
    if objective == "negative_sampling" and cfg.negatives == "generated" and likelihood != "bernoulli":
        raise ValueError(f"negatives 'generated' needs the bernoulli likelihood, not {likelihood!r}; "
                         f"use negatives 'aux' or 'uniform'")


def auxiliary_use(objective: str, cfg: ObjectiveParams) -> str:
    """'required' for BPVAE and for negative sampling from an auxiliary set, 'unused' otherwise."""
    needs = objective == "bpvae" or (objective == "negative_sampling" and cfg.negatives == "aux")
    return "required" if needs else "unused"


def _elbo_terms(model: Any, x: torch.Tensor, prior_sd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z) at one reparameterised posterior sample (B,), analytic KL to N(0, prior_sd²) (B, d))."""
    mean, log_var = model.posterior(x)
    z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
    return model.log_px(model.decode(z), x), gaussian.kl_normal(mean, log_var, 0.0, prior_sd)


def training_loss(
    model: Any, objective: str, cfg: ObjectiveParams, x: torch.Tensor, beta: float, free_bits: float,
    aux: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scalar loss of ``objective`` on the minibatch ``x`` (and ``aux``), with per-batch logs in nats/example.

    ``beta`` and ``free_bits`` (warm-up and free bits of the training schedule) apply to the KL terms of the
    evidence bounds; the negative-sampling KL is always at full weight. Randomness (posterior samples,
    noise and generated negatives) comes from the global RNG, which training seeds and checkpoints.
    """
    if auxiliary_use(objective, cfg) == "required" and aux is None:
        raise ValueError(f"objective {objective!r} needs an auxiliary minibatch")
    log_px, kl = _elbo_terms(model, x, 1.0)
    loss = -log_px.mean() + beta * model.kl_penalty(kl, free_bits)
    logs = {"elbo": (log_px - kl.sum(1)).detach().mean(), "kl_z1": kl.sum(1).detach().mean()}
    if objective == "bpvae":
        log_py, kl_y = _elbo_terms(model, aux, 1.0 if cfg.literal_eq5 else float(cfg.simple_prior_std))
        loss = loss - log_py.mean() + beta * model.kl_penalty(kl_y, free_bits)
        logs["elbo_simple"] = (log_py - kl_y.sum(1)).detach().mean()
    elif objective == "negative_sampling":
        if cfg.negatives == "aux":
            negatives = aux
        elif cfg.negatives == "uniform":
            noise = torch.randint(0, 256, x.shape, dtype=torch.uint8, device=x.device)
            negatives = model.prepare(noise, None)
        else:
            z = torch.randn(x.shape[0], *model.latent_shapes()[0], device=x.device)
            generated = torch.sigmoid(model.decode(z))  # Bernoulli means, in the model's input space
            if cfg.generator_term:
                with frozen(model.encoder.parameters()):
                    g_mean, g_log_var = model.posterior(generated)
                    gen_kl = gaussian.kl_normal(g_mean, g_log_var, 0.0, 1.0).sum(1)
                loss = loss + gen_kl.mean()
                logs["kl_generated_pos"] = gen_kl.detach().mean()
            negatives = generated.detach()
        n_mean, n_log_var = model.posterior(negatives)
        neg_kl = gaussian.kl_normal(n_mean, n_log_var, float(cfg.negative_shift), 1.0).sum(1)
        loss = loss + neg_kl.mean()
        logs["kl_negative"] = neg_kl.detach().mean()
    logs = {"loss": loss.detach(), **logs}
    return loss, logs
