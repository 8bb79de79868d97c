"""Shared numerics: log-mean-exp, bits/dim, per-example seeds."""

import math

import numpy as np
import torch
from ood_bench.numerics import bits_per_dim, example_generators, example_seed, log_mean_exp, stacked_normal


def test_log_mean_exp_matches_direct_formula_and_is_stable():
    v = torch.tensor([[0.0, 1.0], [2.0, 3.0], [-1.0, 5.0]])
    expected = torch.log(torch.exp(v.double()).mean(0))
    torch.testing.assert_close(log_mean_exp(v, 0), expected)
    big = torch.tensor([-10000.0, -10000.0])
    assert log_mean_exp(big, 0).item() == -10000.0
    assert log_mean_exp(v, 0).dtype == torch.float64


def test_bits_per_dim_units():
    ll = torch.tensor([-784 * math.log(2.0)], dtype=torch.float64)  # one bit per pixel, in nats
    assert bits_per_dim(ll, 784).tolist() == [1.0]
    assert bits_per_dim(np.array([0.0]), 10).dtype == np.float64


def test_example_seed_depends_on_every_part_but_not_on_batching():
    s = example_seed(0, "fp", 5, "iwae")
    assert s == example_seed(0, "fp", 5, "iwae")
    assert len({s, example_seed(1, "fp", 5, "iwae"), example_seed(0, "fq", 5, "iwae"),
                example_seed(0, "fp", 6, "iwae"), example_seed(0, "fp", 5, "elbo")}) == 5
    a = stacked_normal(example_generators(0, "fp", [3, 4, 5], "x"), (2,))
    b = stacked_normal(example_generators(0, "fp", [5], "x"), (2,))
    torch.testing.assert_close(a[2], b[0])
