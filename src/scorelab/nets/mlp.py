"""Residual MLP F(x_in, c_noise[, y]) for low-dimensional data (toy 2-D sets, vectors)."""
from __future__ import annotations

from torch import nn

from .embed import ConditionEmbedding


class ResidualLayer(nn.Module):
    """h + Linear(SiLU(Linear(LayerNorm(h)) + emb))."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class MLP(nn.Module):
    """x [B, dim] → F [B, dim]: input projection, `depth` residual layers with the σ (and class) embedding
    added inside each, zero-initialised output projection (so D = c_skip·x at initialisation)."""

    def __init__(self, dim: int, width: int = 128, depth: int = 4, n_classes: int = 0):
        super().__init__()
        self.embed = ConditionEmbedding(64, width, n_classes)
        self.inp = nn.Linear(dim, width)
        self.layers = nn.ModuleList(ResidualLayer(width, width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, c_noise, class_labels=None):
        emb = self.embed(c_noise, class_labels)
        h = self.inp(x.flatten(1))
        for layer in self.layers:
            h = layer(h, emb)
        return self.out(h).reshape(x.shape)
