"""Denoising pretraining of a backbone: predict the Gaussian noise added to atom positions.

For systems without a pretrained checkpoint (``GeomEmbedder(pretrain="denoise")``).
The learners' training loop does not fit this objective: it is built around
time-lagged pairs of frames, validation splits and callbacks, while denoising
trains on single frames drawn at random, for a fixed number of steps. What it
shares with the learners are the seeding seams: every random draw comes from
the generator it is given.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["denoising_pretrain"]


def denoising_pretrain(backbone: nn.Module, head: nn.Module, frames: np.ndarray, atomic_numbers, *,
                       steps: int, lr: float, noise_std: float, batch_size: int,
                       rng: np.random.Generator, generator: torch.Generator, device: torch.device,
                       progress: bool = False) -> list[float]:
    """Train ``backbone`` and ``head`` in place to predict noise added to ``frames``.

    Parameters
    ----------
    backbone : torch.nn.Module
        Maps (atomic numbers, positions, batch) to atom scalars and vectors.
    head : torch.nn.Module
        Maps the backbone's scalars and vectors to a per-atom 3-vector.
    frames : ndarray of shape (n_frames, n_atoms, 3)
        Positions in Angstrom of the selected atoms.
    atomic_numbers : array-like of shape (n_atoms,)
    steps, lr, noise_std, batch_size
        AdamW steps and learning rate, the noise's standard deviation in
        Angstrom, and frames per step.
    rng : numpy.random.Generator
        Draws the frames of every step.
    generator : torch.Generator
        Draws the noise (on ``device``).
    device : torch.device
    progress : bool, default=False

    Returns
    -------
    history : list of float
        The loss (mean squared error of the noise prediction) of every step.
        The backbone is left on the CPU.

    Raises
    ------
    FloatingPointError
        When the loss becomes NaN or infinite.
    """
    backbone.to(device).train().requires_grad_(True)
    head.to(device).train()
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    n_atoms = frames.shape[1]
    z = torch.as_tensor(atomic_numbers, device=device)
    history: list[float] = []
    for _ in tqdm(range(steps), desc="denoising pretraining", disable=not progress, leave=False):
        pick = rng.integers(0, len(frames), size=min(batch_size, len(frames)))
        pos = torch.from_numpy(frames[pick]).to(device)
        noise = torch.randn(pos.shape, generator=generator, device=device)
        batch = torch.arange(len(pick), device=device).repeat_interleave(n_atoms)
        x, vec = backbone(z.repeat(len(pick)), (pos + noise_std * noise).reshape(-1, 3), batch)
        loss = torch.nn.functional.mse_loss(head(x, vec), noise.reshape(-1, 3))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Denoising loss became {loss.item()} after {len(history)} steps; "
                f"try a smaller pretrain_lr."
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    backbone.to("cpu")
    return history
