"""Likelihood regret (Xiao, Yan & Amit 2020; spec §6), batched over examples.

``regret(x) = L_S(x; theta, phi_x) - L_S(x; theta, phi)``: the IWAE bound after optimising a copy of
the encoder for this one example (T steps of Adam on its single-example negative ELBO, decoder frozen),
minus the bound of the trained encoder. In-distribution examples are already well encoded, so their
regret is small; higher = more OOD. Reference values: FashionMNIST -> MNIST AUROC 0.988 (seed 001
Table 2), 0.964 in seed 003's reproduction (Table 2).

Every example is an independent optimisation problem. They are solved together: the encoder weights
are stacked into one tensor per parameter with a leading example axis, per-example gradients come from
``torch.func.vmap(torch.func.grad(...))`` over ``functional_call``, and Adam (element-wise, so per
example by construction) updates the stacked tensors. An example's result therefore never depends on
its batch-mates. Adam is torch.optim.Adam's update exactly: bias-corrected moments and L2 weight decay
added to the gradient (coupled, not AdamW), as the reference code's ``optim.Adam(weight_decay=5e-5)``.

``target="posterior"`` optimises the posterior parameters (mu, log sigma^2) of q(z|x) directly,
starting at the encoder's output (spec §6 variant): the decoder passes dominate, so it is much cheaper
and is what the ``cpu`` profile uses.

The same per-example noise (one stream for the T optimisation samples, one for the S importance
samples) is used before and after the optimisation, so the difference is not blurred by fresh noise.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from ood_bench.compute import pass_rows, to_device
from ood_bench.detectors.base import Batch, Detector
from ood_bench.models.base import frozen
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import log_mean_exp, stacked_normal
from ood_bench.params import NonNegativeInt, NonNegativeNumber, PositiveInt, PositiveNumber, checked

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def vae_problem(backbone: torch.nn.Module) -> str | None:
    """Why ``backbone`` is not the single-latent convolutional VAE (kind 'vae') that regret and ROSE need."""
    if not isinstance(backbone, ConvVAE):
        return ("it needs a single-latent convolutional VAE backbone (kind 'vae'); point the detector's "
                "'backbone' at a backbone entry with 'kind: vae' in the suite")
    return None


def adam_step(
    params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
    step: int, lr: float, weight_decay: float,
) -> None:
    """One torch.optim.Adam update (L2 weight decay, bias correction) of every tensor, in place.

    Adam is element-wise, so with per-example parameters stacked along a leading axis this is one
    independent optimiser per example. ``state`` holds ``m:<name>`` and ``v:<name>``; ``step`` counts from 1.
    """
    b1, b2 = BETAS
    c1, c2 = 1 - b1**step, 1 - b2**step
    for name, p in params.items():
        g = grads[name]
        if weight_decay:
            g = g + weight_decay * p
        m, v = state.setdefault(f"m:{name}", torch.zeros_like(p)), state.setdefault(f"v:{name}", torch.zeros_like(p))
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / c2**0.5).add_(ADAM_EPS)
        p.addcdiv_(m, denom, value=-lr / c1)


def iwae_at(model: ConvVAE, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
            noise: torch.Tensor) -> torch.Tensor:
    """IWAE bound (nats, float64) of each example under given posterior parameters; noise (S, B, d)."""
    samples, rows = noise.shape[0], x.shape[0]
    per_pass = max(1, pass_rows(x.device, "regret_iwae") // rows)
    weights = []
    for s in range(0, samples, per_pass):
        eps = noise[s : s + per_pass]
        n = eps.shape[0]
        terms = model.weights(x.repeat(n, 1, 1, 1), mean.repeat(n, 1), logvar.repeat(n, 1), eps.reshape(n * rows, -1))
        weights.append(terms.bound.double().view(n, rows))
    return log_mean_exp(torch.cat(weights), dim=0)


def optimise_posterior(
    model: ConvVAE, x: torch.Tensor, step_noise: torch.Tensor, target: str, lr: float, weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of every example after T = len(step_noise) per-example Adam steps.

    ``step_noise`` is (T, B, d): the reparameterisation noise of each step.
    """
    if target == "posterior":
        with torch.no_grad():
            mean, logvar = model.posterior(x)
        params = {"mean": mean.clone(), "logvar": logvar.clone()}
        state: dict[str, torch.Tensor] = {}
        for t, eps in enumerate(step_noise, start=1):
            with torch.enable_grad():
                leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
                loss = model.negative_elbo(x, leaves["mean"], leaves["logvar"], eps).sum()
                grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
            adam_step(params, grads, state, t, lr, weight_decay)
        return params["mean"], params["logvar"]

    means, logvars = [], []
    chunk = pass_rows(x.device, "regret_encoders")  # each example holds a copy of the encoder
    for start in range(0, x.shape[0], chunk):
        m, lv = _optimise_encoder(model, x[start : start + chunk], step_noise[:, start : start + chunk], lr,
                                  weight_decay)
        means.append(m)
        logvars.append(lv)
    return torch.cat(means), torch.cat(logvars)


def _optimise_encoder(
    model: ConvVAE, x: torch.Tensor, step_noise: torch.Tensor, lr: float, weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    encoder, rows = model.encoder, x.shape[0]
    params = {n: p.detach().unsqueeze(0).repeat(rows, *([1] * p.dim())) for n, p in encoder.named_parameters()}

    def posterior_of(p: dict[str, torch.Tensor], xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = functional_call(encoder, p, (xi.unsqueeze(0),)).chunk(2, dim=1)
        return mean, logvar

    def loss_of(p: dict[str, torch.Tensor], xi: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        mean, logvar = posterior_of(p, xi)
        return model.negative_elbo(xi.unsqueeze(0), mean, logvar, eps.unsqueeze(0)).sum()

    per_example_grad = vmap(grad(loss_of))
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t, eps in enumerate(step_noise, start=1):
            adam_step(params, per_example_grad(params, x, eps), state, t, lr, weight_decay)
        mean, logvar = vmap(posterior_of)(params, x)
    return mean.squeeze(1), logvar.squeeze(1)


def regret_reference_loop(
    model: ConvVAE, x: torch.Tensor, step_noise: torch.Tensor, iwae_noise: torch.Tensor, target: str,
    lr: float, weight_decay: float,
) -> torch.Tensor:
    """The one-example-at-a-time computation (deep copy + torch.optim.Adam), for tests and benchmarks.

    Like :meth:`LikelihoodRegret.score` it freezes the backbone, so backward passes skip the decoder weights.
    """
    with frozen(model.parameters()):
        return _reference_loop(model, x, step_noise, iwae_noise, target, lr, weight_decay)


def _reference_loop(
    model: ConvVAE, x: torch.Tensor, step_noise: torch.Tensor, iwae_noise: torch.Tensor, target: str,
    lr: float, weight_decay: float,
) -> torch.Tensor:
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        with torch.no_grad():
            mean0, logvar0 = model.posterior(xi)
        if target == "posterior":
            mean, logvar = mean0.clone().requires_grad_(True), logvar0.clone().requires_grad_(True)
            leaves = [mean, logvar]
        else:
            encoder = copy.deepcopy(model.encoder).requires_grad_(True)
            leaves = list(encoder.parameters())
        optimizer = torch.optim.Adam(leaves, lr=lr, betas=BETAS, eps=ADAM_EPS, weight_decay=weight_decay)
        for eps in step_noise[:, i : i + 1]:
            if target == "encoder":
                mean, logvar = encoder(xi).chunk(2, dim=1)
            loss = model.negative_elbo(xi, mean, logvar, eps).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            if target == "encoder":
                mean, logvar = encoder(xi).chunk(2, dim=1)
            noise = iwae_noise[:, i : i + 1]
            out.append(iwae_at(model, xi, mean.detach(), logvar.detach(), noise)
                       - iwae_at(model, xi, mean0, logvar0, noise))
    return torch.cat(out)


class LikelihoodRegret(Detector):
    """IWAE bound after per-example encoder optimisation minus before, in nats (spec §6).

    Parameters
    ----------
    steps:
        T, Adam steps per example (reference 100).
    lr, weight_decay:
        Adam learning rate and L2 weight decay (reference 2e-4, 5e-5).
    iwae_samples:
        S importance samples of both bounds (reference 1000 = 200 repeats x 5).
    target:
        ``encoder`` (a per-example copy of every encoder weight, the reference) or ``posterior``
        (only the per-example mu and log sigma^2, much cheaper).
    """

    name = "likelihood_regret"
    version = "1"

    @checked
    def __init__(self, steps: NonNegativeInt = 100, lr: PositiveNumber = 2e-4, weight_decay: NonNegativeNumber = 5e-5,
                 iwae_samples: PositiveInt = 1000, target: Literal["encoder", "posterior"] = "encoder"):
        self.steps, self.lr, self.weight_decay = steps, float(lr), float(weight_decay)
        self.iwae_samples, self.target = iwae_samples, target

    @classmethod
    def backbone_problem(cls, backbone: torch.nn.Module) -> str | None:
        return vae_problem(backbone)

    def outputs(self) -> list[str]:
        return ["regret"]

    def noise(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (step noise (T, B, d), importance-sampling noise (S, B, d)) from the batch's generators."""
        d = self.backbone_.latent_dim
        return _noise(batch.generators("regret-steps"), self.steps, d), _noise(
            batch.generators("regret-iwae"), self.iwae_samples, d)

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        model = self.backbone_
        dtype = next(model.parameters()).dtype
        x = self._model_input(batch).to(dtype)
        step_noise, iwae_noise = (to_device(n.to(dtype), x.device) for n in self.noise(batch))
        with frozen(model.parameters()), torch.no_grad():  # the decoder is fixed: no weight gradients
            before = iwae_at(model, x, *model.posterior(x), iwae_noise)
            mean, logvar = optimise_posterior(model, x, step_noise, self.target, self.lr, self.weight_decay)
            after = iwae_at(model, x, mean, logvar, iwae_noise)
        return {"regret": (after - before).cpu().numpy().astype(np.float64)}


def _noise(generators: Sequence[torch.Generator], n: int, d: int) -> torch.Tensor:
    """(n, B, d) standard normal noise, column i from generator i only."""
    if n == 0:
        return torch.zeros(0, len(generators), d)
    return stacked_normal(generators, (n, d)).transpose(0, 1).contiguous()
