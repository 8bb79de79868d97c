"""ROSE (Choi, Yoon, Bae & Kang; seed 003 §4, App. A; spec §7): Fisher-preconditioned gradient norms.

For each parameterised encoder layer l (every convolution and every dense layer, the mean / log-variance
head included, as the reference fits every layer of its all-convolutional encoder), ``g_l(x)`` is the
gradient of the single-example negative ELBO (reconstruction NLL at z = mu plus analytic KL, so it is
deterministic) w.r.t. the layer's weight and bias. The layer score is ``s_l = g_l^T F_l^{-1} g_l``
(seed 003 eq. 5) with F_l the empirical Fisher of
layer l on ``n_fit`` in-distribution training examples, approximated

* ``diag``: ``F_l = diag(E[g_l^2])`` (floored at 1e-8);
* ``ekfac``: G_l (out x (in*k*k + 1), bias as the last input column) in the Kronecker eigenbasis of
  ``A_l = E[a a^T]`` (unfolded input patches with a constant 1) and ``B_l = E[d d^T]`` (gradients w.r.t.
  the layer's outputs, per spatial location), both eigendecomposed in float64, with the diagonal
  ``Sigma_l = E[(U_B^T G_l U_A)^2]`` re-estimated in that basis (George et al. 2018):
  ``s_l = sum((U_B^T G_l U_A)^2 / (Sigma_l + 1e-8))``.

Layer scores are z-normalised with their mean and standard deviation on the same ``n_fit`` examples and
aggregated by ``max`` (the reference code), or by the paper's ``||ReLU(s_hat + beta)||_p``
(``aggregation="relu_pnorm"``, ``p=None`` meaning infinity). Higher = more OOD. Reference values:
FashionMNIST -> MNIST AUROC 0.995 with EKFAC, 0.971 with DIAG (seed 003 Tables 2 and 6).

Per-example gradients come from one backward pass of the summed loss per batch (no loop), shared by the ROSE
detectors that score the same batch on the same weights (EKFAC and DIAG): a forward hook
keeps each layer's input A and the pass gives each output gradient D, per example and location, so
G = D^T A exactly (nothing couples examples). ``per_example_gradients`` (``torch.func.vmap(grad(...))``) and
``per_example_gradients_loop`` compute G directly; the tests hold the three equal. The fitted statistics are cached in
``fit_cache_dir`` (``<checkpoint cache>/fits/`` in a run; atomic writes) under a key of the backbone's
weights, the fit data, the parameters that shape the fit and the detector version, so a re-run, or a
second suite entry that differs only in aggregation, does not refit. Outside a run they are kept in memory.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, Strict
from torch import nn
from torch.func import functional_call, grad, vmap

from ood_bench.data.imageset import ImageSet
from ood_bench.data.sampling import subset
from ood_bench.detectors.base import Batch, Detector
from ood_bench.detectors.regret import vae_problem
from ood_bench.hashing import digest
from ood_bench.models.base import frozen
from ood_bench.models.checkpoints import load_checkpoint, save_atomic, weights_digest
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import example_generators
from ood_bench.params import Flag, Number, checked

EPS = 1e-8
FIT_BATCH = 128
FIT_SEED = 0
FITS_COMPUTED = 0
"""How many times statistics were computed (not loaded) in this process; tests read it."""
_MEMORY: dict[str, dict[str, Any]] = {}


def encoder_layers(model: ConvVAE) -> dict[str, nn.Conv2d | nn.Linear]:
    """Every parameterised layer of the encoder (its convolutions and dense layers, the mean / log-variance
    head included) by parameter-name prefix (e.g. ``encoder.0``). Any other parameterised module is refused,
    so no encoder parameter can silently fall outside the fit."""
    layers: dict[str, nn.Conv2d | nn.Linear] = {}
    for n, m in model.encoder.named_children():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if m.bias is None:
                raise ValueError(f"rose: encoder layer {n} has no bias; the fit assumes one")
            layers[f"encoder.{n}"] = m
        elif any(True for _ in m.parameters()):
            raise ValueError(f"rose: encoder layer {n} ({type(m).__name__}) is neither Conv2d nor Linear")
    return layers


def single_example_loss(model: ConvVAE, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Negative ELBO of one prepared example (C, H, W) with z = mu, under replacement ``params``."""
    mean, logvar = _posterior(model, params, x.unsqueeze(0))
    return model.negative_elbo(x.unsqueeze(0), mean, logvar).sum()


def _posterior(model: ConvVAE, params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    enc = {k.removeprefix("encoder."): v for k, v in params.items()}
    mean, logvar = functional_call(model.encoder, enc, (x,)).chunk(2, dim=1)
    return mean, logvar


def per_example_gradients(model: ConvVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{layer: G (B, out, in*k*k + 1)}``: per-example gradients of every encoder layer, bias last
    (k = 1 for a dense layer)."""
    convs = encoder_layers(model)
    params = {f"{n}.{p}": getattr(m, p).detach() for n, m in convs.items() for p in ("weight", "bias")}
    with torch.no_grad():
        grads = vmap(grad(lambda p, xi: single_example_loss(model, p, xi)), in_dims=(None, 0))(params, x)
    return {n: torch.cat([grads[f"{n}.weight"].flatten(2), grads[f"{n}.bias"].unsqueeze(2)], dim=2) for n in convs}


def per_example_gradients_loop(model: ConvVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same gradients with one backward pass per example (the slow reference, for tests/benchmarks)."""
    with frozen(model.decoder.parameters()):
        return _per_example_gradients_loop(model, x)


def _per_example_gradients_loop(model: ConvVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    convs = encoder_layers(model)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in convs}
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        mean, logvar = model.posterior(xi)
        loss = model.negative_elbo(xi, mean, logvar).sum()
        leaves = [t for m in convs.values() for t in (m.weight, m.bias)]
        gs = torch.autograd.grad(loss, leaves)
        for j, n in enumerate(convs):
            out[n].append(torch.cat([gs[2 * j].flatten(1), gs[2 * j + 1].unsqueeze(1)], dim=1))
    return {n: torch.stack(v) for n, v in out.items()}


def layer_activations(model: ConvVAE, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per encoder layer: (inputs a (B, L, in*k*k + 1) as unfolded patches with a constant 1 last, output
    gradients d (B, L, out)) at the L spatial locations, for the summed per-example losses. A dense layer
    is the one-location case (L = 1, its input vector as the patch).

    The loss is a sum of per-example losses and nothing couples examples, so d of example i is that
    example's own, and ``sum_t d_t a_t^T`` is its per-example gradient G.
    """
    convs = encoder_layers(model)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for n, m in convs.items():
        def keep(mod: nn.Module, args: tuple, out: torch.Tensor, n: str = n) -> None:
            inputs[n] = args[0].detach()
            outputs[n] = out
        hooks.append(m.register_forward_hook(keep))
    try:
        with torch.enable_grad():
            mean, logvar = model.posterior(x)
            loss = model.negative_elbo(x, mean, logvar).sum()
            out_grads = torch.autograd.grad(loss, [outputs[n] for n in convs])
    finally:
        for h in hooks:
            h.remove()
    result = {}
    for (n, m), d in zip(convs.items(), out_grads, strict=True):
        if isinstance(m, nn.Linear):
            patches, d = inputs[n].unsqueeze(2), d.unsqueeze(2)  # (B, in, 1), (B, out, 1)
        else:
            patches = F.unfold(inputs[n], m.kernel_size, padding=m.padding, stride=m.stride)  # (B, in*k*k, L)
        a = torch.cat([patches, patches.new_ones(patches.shape[0], 1, patches.shape[2])], dim=1)
        result[n] = (a.transpose(1, 2), d.flatten(2).transpose(1, 2))
    return result


def kronecker_factors(model: ConvVAE, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per encoder layer, in float64: (sum of a a^T, sum of d d^T, number of (example, location) pairs)."""
    stats = {}
    for n, (a, d) in layer_activations(model, x).items():
        a = a.reshape(-1, a.shape[2]).double()
        d = d.reshape(-1, d.shape[2]).double()
        stats[n] = (a.T @ a, d.T @ d, a.shape[0])
    return stats



@dataclass(frozen=True)
class RankOne:
    """Per-example outer products ``d_b a_b^T`` (float64) kept as their factors: a dense layer's (rotated)
    gradient, whose squared entries are ``d^2 (a^2)^T`` again of rank one."""

    d: torch.Tensor
    """(B, out)"""
    a: torch.Tensor
    """(B, in + 1)"""

    def full(self) -> torch.Tensor:
        """The (B, out, in + 1) gradients themselves (tests, small layers)."""
        return self.d.unsqueeze(2) * self.a.unsqueeze(1)


def summed_squares(r: torch.Tensor | RankOne) -> torch.Tensor:
    """Sum over examples of the squared gradient entries, (out, in*k*k + 1)."""
    if isinstance(r, RankOne):
        return (r.d**2).T @ (r.a**2)
    return (r**2).sum(0)


def weighted_squares(r: torch.Tensor | RankOne, weights: torch.Tensor) -> torch.Tensor:
    """Per example, ``sum(weights * G^2)`` over the gradient entries, (B,)."""
    if isinstance(r, RankOne):
        return ((r.d**2) @ weights * r.a**2).sum(1)
    return (r**2 * weights).flatten(1).sum(1)


_SHARED: dict[str, Any] = {}
"""The last batch's layer activations (one entry): ROSE detectors that score the same batch on the same
backbone weights one after another (EKFAC and DIAG in one run) compute the backward pass once."""


def shared_activations(model: ConvVAE, weights_key: str, batch: Batch,
                       x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`layer_activations` of ``x`` (the prepared ``batch``), reused when the previous call had the same
    weights digest, example set, seed and indices (hence the same prepared input and the same values)."""
    key = (weights_key, batch.set_fingerprint, batch.seed, batch.indices.tobytes(), str(x.device), x.dtype)
    if _SHARED.get("key") != key:
        _SHARED.clear()
        _SHARED.update(key=key, value=layer_activations(model, x))
    return _SHARED["value"]


class Rose(Detector):
    """Max (or ReLU p-norm) of z-normalised Fisher-preconditioned encoder gradient norms (spec §7).

    Parameters
    ----------
    preconditioner:
        ``ekfac`` (default, seed 003's best) or ``diag``.
    n_fit:
        In-distribution training examples for the Fisher and the z-normalisation (reference 1000). A run
        passes the training set minus the sanity set's images, so the fit never sees an evaluated example
        (before version 4 the fit set was a subset of the sanity set: its AUROC fell to 0.39).
    aggregation:
        ``max`` of the z-scores (reference code) or ``relu_pnorm``: ``||ReLU(s_hat + beta)||_p`` (paper).
    p, beta:
        The norm (None = infinity) and the shift of ``relu_pnorm``.
    diag_sqrt:
        With ``diag``: the reference code's layer score ``sqrt(s_l) / (2 sqrt(n_l))`` instead of eq. 5.
    """

    name = "rose"
    version = "5"
    """5: dense layers' gradients scored from their rank-one factors (the same scores up to float rounding,
    ~3.5x faster with the categorical head); 4: fit set disjoint from the sanity set."""
    fit_is_costly = True

    @classmethod
    def backbone_problem(cls, backbone: torch.nn.Module) -> str | None:
        return vae_problem(backbone)

    @checked
    def __init__(self, preconditioner: Literal["ekfac", "diag"] = "ekfac",
                 n_fit: Annotated[int, Strict(), Field(ge=2)] = 1000, aggregation: Literal["max", "relu_pnorm"] = "max",
                 p: Number | None = None, beta: Number = 0.0, diag_sqrt: Flag = False):
        if p is not None and p < 1:
            raise ValueError(f"p must be a number >= 1 or null (infinity), got {p!r}")
        self.preconditioner, self.n_fit, self.aggregation = preconditioner, n_fit, aggregation
        self.p, self.beta, self.diag_sqrt = p, float(beta), diag_sqrt

    def outputs(self) -> list[str]:
        return ["rose"]

    # ---------------------------------------------------------------------------------- fit
    def fit(self, backbone: torch.nn.Module, id_train: ImageSet) -> Rose:
        self.check_backbone(backbone)
        model = self.backbone_ = backbone
        fit_set = subset(id_train, self.n_fit, FIT_SEED)
        self.weights_key_ = weights_digest(model)
        key = digest("rose-fit", self.version, self.weights_key_, fit_set.fingerprint,
                     {"preconditioner": self.preconditioner, "n_fit": self.n_fit, "diag_sqrt": self.diag_sqrt})
        path = self.fit_cache_dir / f"rose-{key[:32]}.pt" if self.fit_cache_dir else None
        stats = _MEMORY.get(key)
        if stats is None and path is not None and path.exists():
            try:
                stats = load_checkpoint(path)
            except Exception as exc:  # damaged: recomputed, never used
                warnings.warn(f"ROSE statistics {path} are damaged ({exc}); recomputing them", stacklevel=2)
                path.unlink(missing_ok=True)
        if stats is None:
            stats = {k: v.cpu() if torch.is_tensor(v) else v for k, v in self._compute(model, fit_set).items()}
            if path is not None:
                save_atomic(stats, path)
        _MEMORY[key] = stats
        self.stats_ = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in stats.items()}
        self.fit_key_ = key
        return self

    def _compute(self, model: ConvVAE, fit_set: ImageSet) -> dict[str, Any]:
        global FITS_COMPUTED
        FITS_COMPUTED += 1
        device = model.device
        idx = list(range(len(fit_set)))
        x = model.prepare(torch.from_numpy(fit_set.images).to(device),
                          example_generators(FIT_SEED, fit_set.fingerprint, idx, "input"))
        chunks = [x[i : i + FIT_BATCH] for i in range(0, len(idx), FIT_BATCH)]
        stats: dict[str, Any] = {}
        if self.preconditioner == "ekfac":
            sums: dict[str, list] = {}
            for xb in chunks:
                for n, (aa, dd, rows) in kronecker_factors(model, xb).items():
                    if n not in sums:
                        sums[n] = [aa, dd, rows]
                    else:
                        sums[n][0] += aa
                        sums[n][1] += dd
                        sums[n][2] += rows
            for n, (aa, dd, rows) in sums.items():
                stats[f"{n}.UA"] = torch.linalg.eigh(aa / rows).eigenvectors
                stats[f"{n}.UB"] = torch.linalg.eigh(dd / rows).eigenvectors
        # Two passes over the fit chunks (Sigma, then the layer scores that need it) rather than keeping every
        # example's rotated gradients: with the dense layers that would be ~1.7 GB at the cpu profile's width.
        second: dict[str, torch.Tensor] = {}
        for xb in chunks:
            for n, r in self._rotated_gradients(stats, model, xb).items():
                sq = summed_squares(r)
                second[n] = second[n] + sq if n in second else sq
        for n, total in second.items():
            stats[f"{n}.sigma"] = total / len(idx)
        layer_scores = torch.cat([self._layer_scores(stats, self._rotated_gradients(stats, model, xb))
                                  for xb in chunks])
        stats["mu"] = layer_scores.mean(0)
        stats["sd"] = layer_scores.std(0).clamp(min=EPS)
        stats["layers"] = list(second)
        return stats

    # ---------------------------------------------------------------------------------- scores
    def _rotated_gradients(self, stats: dict[str, Any], model: ConvVAE, x: torch.Tensor,
                           activations: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                           ) -> dict[str, torch.Tensor | RankOne]:
        """Per layer, every example's gradient G in the basis the preconditioner is diagonal in, float64:
        ``U_B^T G U_A`` for ekfac, G itself for diag.

        Both come from the layer inputs A (L, in*k*k + 1) and output gradients D (L, out) of each example
        (``activations``, else :func:`layer_activations` of ``x``; G = D^T A), so ekfac rotates the factors,
        ``(D U_B)^T (A U_A)``, and never multiplies a full G by U_A. A dense layer (L = 1) stays a
        :class:`RankOne` pair: its (out x in) gradient is never formed, which is most of the work per example at
        the cpu profile's width. The bases come from float64 eigendecompositions; the products run as float32
        GEMMs (the gradients are float32 anyway).
        """
        out: dict[str, torch.Tensor | RankOne] = {}
        for n, (a, d) in (activations or layer_activations(model, x)).items():
            if self.preconditioner == "ekfac":
                a = a @ stats[f"{n}.UA"].to(a.dtype)
                d = d @ stats[f"{n}.UB"].to(d.dtype)
            out[n] = RankOne(d[:, 0].double(), a[:, 0].double()) if a.shape[1] == 1 else \
                torch.einsum("blo,bli->boi", d, a).double()
        return out

    def _layer_scores(self, stats: dict[str, Any], rotated: dict[str, torch.Tensor | RankOne]) -> torch.Tensor:
        """(B, layers) raw scores s_l from the rotated gradients."""
        cols = []
        for n, r in rotated.items():
            s = weighted_squares(r, 1.0 / stats[f"{n}.sigma"].clamp(min=EPS))
            if self.preconditioner == "diag" and self.diag_sqrt:
                s = s.sqrt() / (2 * math.sqrt(stats[f"{n}.sigma"].numel()))
            cols.append(s)
        return torch.stack(cols, dim=1)

    def layer_z_scores(self, x: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """(B, layers) z-normalised layer scores of prepared inputs ``x`` (of ``batch``, when given: then the
        layer activations are shared with the next ROSE detector that scores the same batch on this backbone)."""
        acts = None if batch is None else shared_activations(self.backbone_, self.weights_key_, batch, x)
        raw = self._layer_scores(self.stats_, self._rotated_gradients(self.stats_, self.backbone_, x, acts))
        return (raw - self.stats_["mu"]) / self.stats_["sd"]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        z = self.layer_z_scores(self._model_input(batch), batch)
        if self.aggregation == "max":
            out = z.max(1).values
        else:
            r = torch.relu(z + self.beta)
            out = r.max(1).values if self.p is None else r.norm(p=float(self.p), dim=1)
        return {"rose": out.cpu().numpy().astype(np.float64)}

