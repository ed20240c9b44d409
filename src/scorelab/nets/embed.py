"""Noise-level and class embeddings shared by the MLP and the U-Net."""
from __future__ import annotations

import math

import torch
from torch import nn


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (EDM's NCSN++ embedding, Song et al. 2021):
    [cos(2π f c), sin(2π f c)] with fixed f ~ N(0, scale²), stored as a buffer (saved with the weights)."""

    def __init__(self, channels: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(channels // 2, generator=g) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * c_noise[:, None].to(self.freqs.dtype) * self.freqs[None, :]
        return torch.cat([phase.cos(), phase.sin()], dim=1)


class ConditionEmbedding(nn.Module):
    """emb = MLP(Fourier(c_noise)) + class embedding (index n_classes = "no label", used when labels are None)."""

    def __init__(self, fourier_channels: int, emb_dim: int, n_classes: int = 0):
        super().__init__()
        self.fourier = FourierEmbedding(fourier_channels)
        self.mlp = nn.Sequential(nn.Linear(fourier_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.n_classes = n_classes
        self.label = nn.Embedding(n_classes + 1, emb_dim) if n_classes > 0 else None

    def forward(self, c_noise, class_labels=None):
        emb = self.mlp(self.fourier(c_noise).to(self.mlp[0].weight.dtype))
        if self.label is not None:
            if class_labels is None:
                class_labels = torch.full((c_noise.shape[0],), self.n_classes, device=c_noise.device, dtype=torch.long)
            emb = emb + self.label(class_labels)
        return emb
