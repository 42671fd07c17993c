"""The SPIB network and its densities (g2v_sklearn.nn._spib)."""

import numpy as np
import torch

from g2v_sklearn.nn._spib import SPIBModule, gaussian_log_density, vamp_prior_log_density


def test_gaussian_and_vamp_prior_densities():
    g = torch.Generator().manual_seed(0)
    z, mean, logvar = (torch.randn(5, 3, generator=g) for _ in range(3))
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mean, logvar), expected)
    reps_mean, reps_logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights),
        torch.distributions.Independent(torch.distributions.Normal(reps_mean, torch.exp(0.5 * reps_logvar)), 1))
    ours = vamp_prior_log_density(z, reps_mean, reps_logvar, weights.log())
    torch.testing.assert_close(ours, mixture.log_prob(z))


def test_keep_states_slices_the_decoder_and_prior():
    from g2v_sklearn.nn._lobes import MLPLobe

    net = SPIBModule(MLPLobe(3, (8,), 4), z_dim=2, n_states=5)
    z = torch.randn(7, 2)
    before = net.decoder(z)
    net.keep_states(np.array([0, 2, 4]))
    assert net.n_states == 3 and net.prior_logits.shape == (3,)
    torch.testing.assert_close(net.decoder(z), before[:, [0, 2, 4]])
