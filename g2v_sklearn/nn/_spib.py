"""The SPIB network and its losses, in torch alone.

:class:`SPIBModule` is the encoder (any lobe), a Gaussian latent, a linear
decoder to state logits and the VAMP-prior weights; the functions are the
log densities and the per-pair losses. The estimator that trains them is
:class:`g2v_sklearn.SPIBEstimator`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["SPIBModule", "gaussian_log_density", "spib_pair_losses", "vamp_prior_log_density"]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Log density of diagonal Gaussians, summed over the last axis.

    .. math::
        \\log \\mathcal N(z; \\mu, \\mathrm{diag}\\,\\sigma^2)
        = -\\tfrac12 \\sum_d \\left[(z_d - \\mu_d)^2 e^{-\\log\\sigma_d^2} + \\log\\sigma_d^2
          + \\log 2\\pi\\right]

    Parameters
    ----------
    z, mean, logvar : torch.Tensor, broadcastable, last axis the latent dimension

    Returns
    -------
    torch.Tensor
        The broadcast shape without the last axis.
    """
    return -0.5 * ((z - mean).pow(2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(dim=-1)


def vamp_prior_log_density(z: Tensor, rep_mean: Tensor, rep_logvar: Tensor, log_weights: Tensor) -> Tensor:
    """Log density of a VampPrior, a mixture of the representatives' encoder Gaussians.

    .. math::
        \\log r(z) = \\log \\sum_k \\omega_k\\, \\mathcal N(z; \\mu(u_k), \\sigma^2(u_k))

    Parameters
    ----------
    z : torch.Tensor of shape (n, z_dim)
    rep_mean, rep_logvar : torch.Tensor of shape (n_states, z_dim)
        Encoder Gaussians of the representative inputs :math:`u_k`.
    log_weights : torch.Tensor of shape (n_states,)
        Normalised log mixture weights :math:`\\log \\omega_k`.

    Returns
    -------
    torch.Tensor of shape (n,)
    """
    components = gaussian_log_density(z[:, None, :], rep_mean[None], rep_logvar[None])  # (n, K)
    return torch.logsumexp(components + log_weights[None], dim=1)


def spib_pair_losses(log_probs: Tensor, future_labels: Tensor, z: Tensor, mean: Tensor, logvar: Tensor,
                     rep_mean: Tensor, rep_logvar: Tensor, log_weights: Tensor, beta: float):
    """Per-pair SPIB loss: cross-entropy of the future state plus beta times a one-sample KL.

    .. math::
        \\ell_t = -\\log q(y_{t+\\tau} \\mid z_t)
                 + \\beta \\left[\\log q(z_t \\mid x_t) - \\log r(z_t)\\right],
        \\quad z_t \\sim q(z \\mid x_t)

    Parameters
    ----------
    log_probs : torch.Tensor of shape (n, n_states)
        Decoder log-probabilities at the sampled latents ``z``.
    future_labels : torch.Tensor of shape (n,), int64
        State labels at t + lagtime.
    z, mean, logvar : torch.Tensor of shape (n, z_dim)
        Sampled latents and the encoder Gaussians they were drawn from.
    rep_mean, rep_logvar, log_weights
        The prior, see :func:`vamp_prior_log_density`.
    beta : float

    Returns
    -------
    loss, cross_entropy, kl : torch.Tensor of shape (n,)
    """
    cross_entropy = -log_probs.gather(1, future_labels[:, None]).squeeze(1)
    kl = gaussian_log_density(z, mean, logvar) - vamp_prior_log_density(z, rep_mean, rep_logvar, log_weights)
    return cross_entropy + beta * kl, cross_entropy, kl


class SPIBModule(nn.Module):
    """Encoder lobe -> Gaussian latent; linear decoder -> log-probabilities of future states.

    Parameters
    ----------
    lobe : torch.nn.Module
        A :class:`TokenLobe` or :class:`MLPLobe` with ``2 * z_dim`` outputs:
        the latent mean, then the latent log-variance.
    z_dim : int
    n_states : int
        Decoder outputs (states); :meth:`keep_states` shrinks it.
    """

    def __init__(self, lobe: nn.Module, z_dim: int, n_states: int) -> None:
        super().__init__()
        self.lobe = lobe
        self.z_dim = z_dim
        self.decoder = nn.Linear(z_dim, n_states)
        self.prior_logits = nn.Parameter(torch.zeros(n_states))

    def reset_parameters(self) -> None:
        self.lobe.reset_parameters()
        self.decoder.reset_parameters()
        nn.init.zeros_(self.prior_logits)

    @property
    def n_states(self) -> int:
        return self.decoder.out_features

    def forward(self, *inputs: Tensor) -> Tensor:
        """Encoder outputs (n, 2 * z_dim): latent means, then log-variances."""
        return self.lobe(*inputs)

    def decode(self, z: Tensor) -> Tensor:
        """Log-probabilities (n, n_states) of the state at t + lagtime."""
        return F.log_softmax(self.decoder(z.to(self.decoder.weight.dtype)), dim=-1)

    def prior_log_weights(self) -> Tensor:
        return F.log_softmax(self.prior_logits, dim=0)

    @torch.no_grad()
    def keep_states(self, keep: np.ndarray) -> None:
        """Keep only the decoder outputs and mixture weights of states ``keep``."""
        index = torch.as_tensor(np.asarray(keep), device=self.decoder.weight.device, dtype=torch.long)
        decoder = nn.Linear(self.z_dim, len(index)).to(self.decoder.weight.device)
        decoder.weight.copy_(self.decoder.weight[index])
        decoder.bias.copy_(self.decoder.bias[index])
        self.decoder = decoder
        self.prior_logits = nn.Parameter(self.prior_logits.detach()[index].clone())
