"""A compact U-Net F(x_in, c_noise[, y]) for 28×28 / 32×32 images, in the style of DDPM / EDM's DDPM++:
residual blocks (GroupNorm, SiLU, 3×3 conv, embedding added as a per-channel scale and shift), average-pool
down-sampling, nearest up-sampling, self-attention at the chosen resolutions, skip connections by concatenation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .embed import ConditionEmbedding


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch) if ch >= 8 else 1, ch)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h)·(1 + scale) + shift with (scale, shift) = Linear(emb);
    out = skip(x) + conv(dropout(SiLU(h))), the last conv zero-initialised."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions, residual, zero-initialised projection."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """`channels[i]` feature maps at resolution H / 2^i, `num_blocks` residual blocks per level on the way down
    (num_blocks + 1 on the way up), attention at the levels in `attn_levels` and, if `mid_attention`, in the
    middle (attn_levels=() and mid_attention=False: a purely convolutional network)."""

    def __init__(self, in_channels: int = 1, channels=(32, 64, 64), num_blocks: int = 1, attn_levels=(2,),
                 dropout: float = 0.0, n_classes: int = 0, mid_attention: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        emb_dim = 4 * channels[0]
        self.embed = ConditionEmbedding(channels[0], emb_dim, n_classes)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch, ch = [channels[0]], channels[0]
        for level, cout in enumerate(channels):
            for _ in range(num_blocks):
                self.down.append(ResBlock(ch, cout, emb_dim, dropout))
                ch = cout
                if level in attn_levels:
                    self.down.append(Attention(ch))
                skip_ch.append(ch)
            if level < len(channels) - 1:
                self.down.append(nn.AvgPool2d(2))
                skip_ch.append(ch)
        mid_attn = [Attention(ch)] if mid_attention else []
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), *mid_attn, ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            cout = channels[level]
            for _ in range(num_blocks + 1):
                self.up.append(ResBlock(ch + skip_ch.pop(), cout, emb_dim, dropout))
                ch = cout
                if level in attn_levels:
                    self.up.append(Attention(ch))
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.norm_out, self.conv_out = _norm(ch), nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, c_noise, class_labels=None):
        emb = self.embed(c_noise, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
                skips.append(h)
            elif isinstance(layer, Attention):
                skips[-1] = h = layer(h)
            else:
                h = layer(h)
                skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            elif isinstance(layer, nn.Upsample):
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
