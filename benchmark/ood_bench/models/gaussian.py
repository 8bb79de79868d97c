"""Diagonal-Gaussian arithmetic shared by every backbone, objective and detector, element-wise, in nats.

Two parameterisations occur: the VAE's encoder gives (mean, log-variance), the HVAE's layers give
(mean, standard deviation). Each formula exists once, here; callers sum over the dimensions they need.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, 1)`` per element."""
    return -0.5 * (z**2 + LOG_2PI)


def log_normal(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, std²)`` per element."""
    return -0.5 * (((z - mean) / std) ** 2 + LOG_2PI) - torch.log(std)


def log_normal_at_noise(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, std²)`` at the reparameterised ``z = mean + std * eps``, from the noise itself
    (no cancellation in ``z - mean``)."""
    return -0.5 * (eps**2 + LOG_2PI) - log_std


def kl_normal(mean: torch.Tensor, log_var: torch.Tensor, prior_mean: float = 0.0,
              prior_std: float = 1.0) -> torch.Tensor:
    """``KL(N(mean, exp(log_var)) || N(prior_mean, prior_std²))`` per element:
    ``½ [(σ² + (μ - m)²)/s² - 1 - log σ² + log s²]``."""
    s2 = float(prior_std) ** 2
    return 0.5 * ((log_var.exp() + (mean - prior_mean) ** 2) / s2 - 1.0 - log_var + math.log(s2))


def kl_normal_std(q_mean: torch.Tensor, q_std: torch.Tensor, p_mean: torch.Tensor,
                  p_std: torch.Tensor) -> torch.Tensor:
    """``KL(N(q_mean, q_std²) || N(p_mean, p_std²))`` per element, both distributions given by tensors."""
    return torch.log(p_std / q_std) + (q_std**2 + (q_mean - p_mean) ** 2) / (2 * p_std**2) - 0.5
