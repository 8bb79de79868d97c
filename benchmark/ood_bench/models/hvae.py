"""Bottom-up hierarchical VAE (Havtorn et al. 2021, seed 001 App. B; spec §1.2 and §1.4).

Generative model p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2) p(x|z_1), inference q(z_1|x) q(z_2|z_1) ...
q(z_L|z_{L-1}), all diagonal Gaussians. Each stochastic layer is preceded by a deterministic stage
of pre-activation residual blocks. A latent is either convolutional (C, H, W) or dense (D,); once a
layer is dense, every layer above it is too. Every stage also receives the deterministic features of
the stage before it (the concatenations [z_l, h_l] going up and [z_l, g_l] going down), the skips
past each stochastic bottleneck that keep the upper layers in use.

Resolutions: a convolutional latent of side H sits below a map of side H * 2^m, and the stage between
them strides by 2 in its last m blocks. A dense latent above a map of even side flattens that map after
one stride-2 block (28 -> 14 -> 7 -> dense for FashionMNIST). The generative path mirrors this with
nearest-neighbour / transposed-convolution upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ood_bench.compute import pass_rows
from ood_bench.models import gaussian
from ood_bench.models.base import Backbone, BoundTerms
from ood_bench.models.heads import head_input, make_head
from ood_bench.models.hvae_blocks import (
    DenseResBlock,
    Flatten,
    GaussianHead,
    Level,
    Relu,
    Unflatten,
    conv_layer,
    halvings,
    map_blocks,
    normalise_output,
    strided_layer,
    wnorm,
)
from ood_bench.models.hvae_config import INFORMATIVE_PRIORS, HVAEConfig, default_latents
from ood_bench.params import config_from_params


class HierarchicalVAE(Backbone):
    """Bottom-up hierarchical VAE with L Gaussian latent layers; see the module docstring."""

    MODEL_VERSION = "1"
    Config = HVAEConfig

    def __init__(self, config: HVAEConfig, input_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.input_shape = tuple(int(d) for d in input_shape)
        c_x, h_x, w_x = self.input_shape
        shapes = [tuple(s) for s in (config.latent_shapes or default_latents(self.input_shape))]
        self._shapes = shapes
        self.num_latent_layers = len(shapes)
        L = self.num_latent_layers
        kernels = config.kernel_sizes or [5] + [3] * (L - 1)
        if len(kernels) != L:
            raise ValueError(
                f"hvae parameter 'kernel_sizes' needs {L} entries (one per stage), got {len(kernels)}"
            )
        seen_dense = False
        for s in shapes:
            if len(s) == 1:
                seen_dense = True
            elif seen_dense:
                raise ValueError("hvae 'latent_shapes': a convolutional latent cannot sit above a dense one")
        self.likelihood = config.likelihood or ("bernoulli" if c_x == 1 else "dlm")
        self.head = make_head(self.likelihood, c_x, config.dlm_components)

        wn, ch, width = config.weight_norm, config.channels, config.dense_width
        levels = [Level((c_x, h_x, w_x))] + [Level(s) for s in shapes]

        def features(level: Level) -> int:
            return ch if level.is_map else width

        # Inference stage l maps level l-1 (x, or [z_{l-1}, h_{l-1}]) to features h_l at level l.
        self.up_stages = nn.ModuleList()
        self.q_heads = nn.ModuleList()
        for l in range(1, L + 1):
            src, dst, k = levels[l - 1], levels[l], kernels[l - 1]
            cin = c_x if l == 1 else src.latent[0] + features(src)
            self.up_stages.append(self._up_stage(src, dst, cin, k))
            self.q_heads.append(GaussianHead(features(dst), dst.latent, 3, wn))

        # Generative stage l maps level l ([z_l] or [z_l, g_l]) to features g_{l-1} at level l-1;
        # p_heads[l-1] turns g_l into p(z_l | z_{l+1}) for l < L.
        self.down_stages = nn.ModuleList()
        self.p_heads = nn.ModuleList()
        for l in range(1, L + 1):
            src, dst, k = levels[l], levels[l - 1], kernels[l - 1]
            cin = src.latent[0] + (features(src) if l < L else 0)
            self.down_stages.append(self._down_stage(src, dst, cin, k))
            if l < L:
                self.p_heads.append(GaussianHead(features(src), src.latent, 3, wn))
        if config.blocks_per_stage == 0 and levels[1].is_map and halvings((h_x, w_x), levels[1].side) > 0:
            self.out_proj = strided_layer(ch, self.head.num_params, wn, up=True)
        else:
            self.out_proj = conv_layer(ch, self.head.num_params, 3, wn)

    # -------------------------------------------------------------------- construction helpers
    def _up_stage(self, src: Level, dst: Level, cin: int, kernel: int) -> nn.Module:
        cfg = self.config
        wn, ch, width, nb = cfg.weight_norm, cfg.channels, cfg.dense_width, cfg.blocks_per_stage
        if nb == 0:
            return self._compact_up_stage(src, dst, cin, kernel)
        if src.is_map and dst.is_map:
            steps = halvings(src.side, dst.side)
            return nn.Sequential(conv_layer(cin, ch, kernel, wn), map_blocks(ch, kernel, nb, steps, -1, wn))
        if src.is_map:
            steps = 1 if src.side[0] % 2 == 0 and src.side[1] % 2 == 0 else 0
            h, w = src.side[0] // 2**steps, src.side[1] // 2**steps
            return nn.Sequential(
                conv_layer(cin, ch, kernel, wn), map_blocks(ch, kernel, nb, steps, -1, wn),
                Flatten(), Relu(), wnorm(nn.Linear(ch * h * w, width), wn),
            )
        return nn.Sequential(wnorm(nn.Linear(cin, width), wn), *[DenseResBlock(width, wn) for _ in range(nb)])

    def _down_stage(self, src: Level, dst: Level, cin: int, kernel: int) -> nn.Module:
        cfg = self.config
        wn, ch, width, nb = cfg.weight_norm, cfg.channels, cfg.dense_width, cfg.blocks_per_stage
        if nb == 0:
            return self._compact_down_stage(src, dst, cin, kernel)
        if src.is_map:
            steps = halvings(dst.side, src.side)
            return nn.Sequential(conv_layer(cin, ch, kernel, wn), map_blocks(ch, kernel, nb, steps, 1, wn))
        if dst.is_map:
            steps = 1 if dst.side[0] % 2 == 0 and dst.side[1] % 2 == 0 else 0
            h, w = dst.side[0] // 2**steps, dst.side[1] // 2**steps
            return nn.Sequential(
                wnorm(nn.Linear(cin, width), wn), Relu(), wnorm(nn.Linear(width, ch * h * w), wn),
                Unflatten((ch, h, w)), map_blocks(ch, kernel, nb, steps, 1, wn),
            )
        return nn.Sequential(wnorm(nn.Linear(cin, width), wn), *[DenseResBlock(width, wn) for _ in range(nb)])

    def _compact_up_stage(self, src: Level, dst: Level, cin: int, kernel: int) -> nn.Module:
        wn, ch, width = self.config.weight_norm, self.config.channels, self.config.dense_width
        if not src.is_map:
            return nn.Sequential(wnorm(nn.Linear(cin, width), wn), Relu(), wnorm(nn.Linear(width, width), wn))
        if dst.is_map:
            steps = halvings(src.side, dst.side)
            layers: list[nn.Module] = []
            for i in range(steps):
                layers += [strided_layer(cin if i == 0 else ch, ch, wn, up=False), Relu()]
            return nn.Sequential(*layers, conv_layer(cin if steps == 0 else ch, ch, kernel, wn))
        even = src.side[0] % 2 == 0 and src.side[1] % 2 == 0
        h, w = (src.side[0] // 2, src.side[1] // 2) if even else src.side
        first = strided_layer(cin, ch, wn, up=False) if even else conv_layer(cin, ch, kernel, wn)
        return nn.Sequential(first, Relu(), Flatten(), wnorm(nn.Linear(ch * h * w, width), wn))

    def _compact_down_stage(self, src: Level, dst: Level, cin: int, kernel: int) -> nn.Module:
        wn, ch, width = self.config.weight_norm, self.config.channels, self.config.dense_width
        if not src.is_map and not dst.is_map:
            return nn.Sequential(wnorm(nn.Linear(cin, width), wn), Relu(), wnorm(nn.Linear(width, width), wn))
        if not src.is_map:
            even = dst.side[0] % 2 == 0 and dst.side[1] % 2 == 0
            h, w = (dst.side[0] // 2, dst.side[1] // 2) if even else dst.side
            layers: list[nn.Module] = [wnorm(nn.Linear(cin, width), wn), Relu(),
                                       wnorm(nn.Linear(width, ch * h * w), wn), Relu(), Unflatten((ch, h, w))]
            if even:
                layers += [strided_layer(ch, ch, wn, up=True), Relu()]
            return nn.Sequential(*layers, conv_layer(ch, ch, kernel, wn))
        steps = halvings(dst.side, src.side)
        if dst.latent == self.input_shape and steps > 0:
            steps -= 1  # the output layer does the last upsampling
        layers = [conv_layer(cin, ch, kernel, wn)]
        for _ in range(steps):
            layers += [Relu(), strided_layer(ch, ch, wn, up=True)]
        return nn.Sequential(*layers)

    # -------------------------------------------------------------------- Backbone API
    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> None:
        config_from_params(HVAEConfig, params, "hvae")

    @classmethod
    def from_params(cls, params: dict[str, Any], input_shape: tuple[int, int, int]) -> HierarchicalVAE:
        return cls(config_from_params(HVAEConfig, params, "hvae"), input_shape)

    def resolved_params(self) -> dict[str, Any]:
        out = asdict(self.config)
        out["latent_shapes"] = [list(s) for s in self._shapes]
        out["kernel_sizes"] = self.config.kernel_sizes or [5] + [3] * (self.num_latent_layers - 1)
        out["likelihood"] = self.likelihood
        if self.config.objective == "elbo":
            # Fields added after the first trained checkpoints: left out when they cannot affect training, so
            # ELBO-trained models keep their checkpoint keys.
            for name in ("objective", "informative_prior", "informative_weight"):
                del out[name]
        return out

    def latent_shapes(self) -> list[tuple[int, ...]]:
        return list(self._shapes)

    def prepare(self, images: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
        return head_input(images, self.input_shape, self.likelihood, generators)

    def _pass(
        self, x: torch.Tensor, noise: Sequence[torch.Tensor], k: int, branches: str | None = None
    ) -> tuple[torch.Tensor, list[dict]]:
        """Inference then generative pass; returns log p(x|z_1) and per layer z, q and p parameters.

        Layers l <= k use the posterior mean going up and the conditional-prior mean going down.
        ``branches`` (``sample`` or ``mean``, training only, k = 0) also returns LL^{>j} for every j from the
        same top-down pass: at layer l the rows that hold posterior z_l are duplicated with z_l drawn from
        (or set to the mean of) p(z_l|z_{l+1}), and rows already on a prior branch continue with prior draws.
        The result then has L * B rows, LL^{>0} (the ordinary term) first, then LL^{>1}, ..., LL^{>L-1};
        the per-layer dicts describe the posterior rows only.
        """
        L = self.num_latent_layers
        if not 0 <= k < L:
            raise ValueError(f"k must be in 0..{L - 1}, got {k}")
        if len(noise) != L:
            raise ValueError(f"expected noise for {L} layers, got {len(noise)}")
        if branches is not None and (k != 0 or branches not in INFORMATIVE_PRIORS):
            raise ValueError(f"branches must be one of {INFORMATIVE_PRIORS} with k = 0")
        rows = x.shape[0]
        layers: list[dict] = []
        inp = x
        for l in range(L):
            h = self.up_stages[l](inp)
            mean, std = self.q_heads[l](h)
            z = mean if l < k else mean + std * noise[l]
            layers.append({"q_mean": mean, "q_std": std, "z": z, "eps": noise[l]})
            inp = torch.cat([z, h], dim=1)
        top = layers[-1]
        top["p_mean"], top["p_std"] = torch.zeros_like(top["z"]), torch.ones_like(top["z"])
        inp = top["z"]
        for l in range(L - 1, 0, -1):
            g = self.down_stages[l](inp)
            mean, std = self.p_heads[l - 1](g)
            layer = layers[l - 1]
            layer["p_mean"], layer["p_std"] = mean[:rows], std[:rows]
            if l - 1 < k:
                layer["z"] = mean
            if branches is None:
                inp = torch.cat([layer["z"], g], dim=1)
            else:
                drawn = mean if branches == "mean" else mean + std * torch.randn_like(std)
                inp = torch.cat([torch.cat([layer["z"], drawn]), torch.cat([g[:rows], g])], dim=1)
        params = self.out_proj(F.relu(self.down_stages[0](inp)))
        target = x if branches is None else x.repeat(L, *([1] * (x.dim() - 1)))
        return self.head.log_prob(params, target), layers

    def bound(self, x: torch.Tensor, noise: list[torch.Tensor], k: int = 0) -> BoundTerms:
        rows, limit = x.shape[0], pass_rows(x.device, "hvae")
        if rows > limit:
            parts = [self.bound(x[i : i + limit], [n[i : i + limit] for n in noise], k) for i in range(0, rows, limit)]
            return BoundTerms(
                log_px=torch.cat([p.log_px for p in parts]),
                kl=[torch.cat([p.kl[l] for p in parts]) for l in range(self.num_latent_layers)],
            )
        log_px, layers = self._pass(x, noise, k)
        kl = []
        for l, layer in enumerate(layers):
            if l < k:
                kl.append(torch.zeros_like(log_px))
                continue
            log_q = gaussian.log_normal_at_noise(layer["eps"], torch.log(layer["q_std"]))
            log_p = gaussian.log_normal(layer["z"], layer["p_mean"], layer["p_std"])
            kl.append((log_q - log_p).flatten(1).sum(1))
        return BoundTerms(log_px=log_px, kl=kl)

    def training_loss(
        self, x: torch.Tensor, beta: float, free_bits: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        noise = [torch.randn(x.shape[0], *s, device=x.device) for s in self._shapes]
        logs: dict[str, float] = {}
        if self.config.objective == "informative":
            branch_ll, layers = self._pass(x, noise, 0, branches=self.config.informative_prior)
            branch_ll = branch_ll.view(self.num_latent_layers, x.shape[0])
            log_px = branch_ll[0]
            # seed 000 eq. 10 (lambda = 1): the ELBO with LL^{>0} replaced by the mean of LL^{>k}, k = 0..L-1
            reconstruction = log_px + self.config.informative_weight * (branch_ll.mean(0) - log_px)
            for j in range(1, self.num_latent_layers):
                logs[f"ll_k{j}"] = branch_ll[j].detach().mean().item()
        else:
            log_px, layers = self._pass(x, noise, 0)
            reconstruction = log_px
        penalty = x.new_zeros(())
        kl_total = torch.zeros_like(log_px)
        for l, layer in enumerate(layers):
            if self.config.kl_estimator == "analytic":
                kl_el = gaussian.kl_normal_std(layer["q_mean"], layer["q_std"], layer["p_mean"], layer["p_std"])
            else:
                log_q = gaussian.log_normal_at_noise(layer["eps"], torch.log(layer["q_std"]))
                kl_el = log_q - gaussian.log_normal(layer["z"], layer["p_mean"], layer["p_std"])
            kl_ex = kl_el.flatten(1).sum(1)
            kl_total = kl_total + kl_ex
            mode = self.config.free_bits_per
            if free_bits <= 0:
                penalty = penalty + kl_ex.mean()
            elif mode == "layer":
                penalty = penalty + kl_ex.mean().clamp(min=free_bits)
            else:
                share = layer["z"].shape[1] if mode == "position" else layer["z"][0].numel()
                penalty = penalty + kl_el.clamp(min=free_bits / share).flatten(1).sum(1).mean()
            logs[f"kl_z{l + 1}"] = kl_ex.detach().mean().item()
        loss = -reconstruction.mean() + beta * penalty
        elbo = log_px - kl_total
        logs = {"loss": loss.item(), "elbo": elbo.detach().mean().item(), **logs}
        return loss, logs

    @torch.no_grad()
    def data_dependent_init(self, x: torch.Tensor) -> None:
        """Set every weight-normalised layer's gain and bias so its outputs on ``x`` have zero mean and unit
        variance per channel, layer by layer in forward order (one pass; each hook rescales its output)."""
        if not self.config.weight_norm:
            return
        hooks = []
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                hooks.append(module.register_forward_hook(normalise_output))
        try:
            self.bound(x, [torch.randn(x.shape[0], *s, device=x.device) for s in self._shapes])
        finally:
            for hook in hooks:
                hook.remove()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Mean of p(x | z_{>k}): posterior means above k, conditional-prior means at and below k."""
        outputs: list[torch.Tensor] = []
        hook = self.out_proj.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        try:
            self._pass(x, [torch.zeros(x.shape[0], *s, device=x.device) for s in self._shapes], k)
        finally:
            hook.remove()
        return self.head.mean(outputs[0])
