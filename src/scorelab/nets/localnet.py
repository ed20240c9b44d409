"""A local, translation-equivariant denoiser network F(x_in, c_noise[, y]): residual 3×3 convolutions at full
resolution, no down-sampling, no attention and no normalisation across pixels, so every output pixel sees only
a (2·(2·num_blocks + 2) + 1)-pixel square of the input: the convolution-only networks whose outputs the local
score machines (ELS/LS, Kamb & Ganguli) are meant to predict.
"""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from .embed import ConditionEmbedding


class LocalBlock(nn.Module):
    """h = conv(SiLU(x))·(1 + scale) + shift with (scale, shift) = Linear(emb); out = x + conv(SiLU(h)), the last
    conv zero-initialised. Pixel-wise apart from the two 3×3 convolutions."""

    def __init__(self, ch: int, emb_dim: int, padding_mode: str):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, padding_mode=padding_mode)
        self.emb = nn.Linear(emb_dim, 2 * ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, padding_mode=padding_mode)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(F.silu(x)) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class LocalConvNet(nn.Module):
    """conv_in → `num_blocks` LocalBlocks of `width` channels → conv_out (zero-initialised). `border` "zero"
    (zero padding, as ELS border="zero") or "circular" (exactly translation-equivariant, as ELS border="circular")."""

    borders = {"zero": "zeros", "circular": "circular"}

    def __init__(self, in_channels: int = 1, width: int = 48, num_blocks: int = 3, border: str = "zero",
                 n_classes: int = 0):
        super().__init__()
        if border not in self.borders:
            raise ValueError(f"border must be one of {sorted(self.borders)}; got {border!r}")
        if int(num_blocks) < 0 or int(width) < 1:
            raise ValueError(f"width must be ≥ 1 and num_blocks ≥ 0; got width={width}, num_blocks={num_blocks}")
        mode = self.borders[border]
        self.receptive_field = 2 * (2 * int(num_blocks) + 2) + 1
        emb_dim = 128
        self.embed = ConditionEmbedding(32, emb_dim, n_classes)
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1, padding_mode=mode)
        self.blocks = nn.ModuleList(LocalBlock(width, emb_dim, mode) for _ in range(int(num_blocks)))
        self.conv_out = nn.Conv2d(width, in_channels, 3, padding=1, padding_mode=mode)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, c_noise, class_labels=None):
        emb = self.embed(c_noise, class_labels)
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.conv_out(F.silu(h))
