"""Layers shared by the GAN models: spectral norm helpers, conditional batch norm, self-attention
and the BigGAN-style residual blocks (up with conditional BN for generators, down for discriminators).

Spectral norm uses torch's parametrization API: weights are stored as `...parametrizations.weight.original`
with power-iteration vectors `_u`/`_v` as buffers, so a state dict round-trips them exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def sn(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Spectral-normalise a conv/linear layer's weight (eps as BigGAN uses)."""
    return spectral_norm(module, eps=1e-6) if enabled else module


def has_spectral_norm(module: nn.Module) -> bool:
    return torch.nn.utils.parametrize.is_parametrized(module, "weight")


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are linear functions of a condition vector (BigGAN's cBN).

    Gain is parameterised as 1 + linear(c), so a zero condition gives plain batch norm.
    """

    def __init__(self, channels: int, cond_dim: int, spectral: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False, eps=1e-4)
        self.gain = sn(nn.Linear(cond_dim, channels, bias=False), spectral)
        self.bias = sn(nn.Linear(cond_dim, channels, bias=False), spectral)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(cond)[:, :, None, None]
        bias = self.bias(cond)[:, :, None, None]
        return self.bn(x) * gain + bias


class SelfAttention(nn.Module):
    """SAGAN self-attention: 1x1 convolutions, softmax over positions, residual with a learnt gate.

    The gate starts at zero, so the block begins as the identity and attention is learnt gradually.
    Keys and values are max-pooled 2x (as in BigGAN) to quarter the attention matrix.
    """

    def __init__(self, channels: int, spectral: bool = True):
        super().__init__()
        self.theta = sn(nn.Conv2d(channels, max(channels // 8, 1), 1, bias=False), spectral)
        self.phi = sn(nn.Conv2d(channels, max(channels // 8, 1), 1, bias=False), spectral)
        self.g = sn(nn.Conv2d(channels, max(channels // 2, 1), 1, bias=False), spectral)
        self.out = sn(nn.Conv2d(max(channels // 2, 1), channels, 1, bias=False), spectral)
        # Shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which 0-d tensors cannot take.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.theta(x).flatten(2)  # (B, C/8, HW)
        key = F.max_pool2d(self.phi(x), 2).flatten(2)  # (B, C/8, HW/4)
        value = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, HW/4)
        attention = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # (B, HW, HW/4)
        attended = (value @ attention.transpose(1, 2)).view(b, -1, h, w)
        return x + self.gamma * self.out(attended)


class ResBlockUp(nn.Module):
    """Generator res-block (EMIXER table 7): cBN, ReLU, upsample, conv3x3, cBN, ReLU, conv3x3,
    plus an upsampled 1x1-conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, spectral: bool = True):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, cond_dim, spectral)
        self.conv1 = sn(nn.Conv2d(in_channels, out_channels, 3, padding=1), spectral)
        self.bn2 = ConditionalBatchNorm2d(out_channels, cond_dim, spectral)
        self.conv2 = sn(nn.Conv2d(out_channels, out_channels, 3, padding=1), spectral)
        self.shortcut = sn(nn.Conv2d(in_channels, out_channels, 1), spectral)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlockDown(nn.Module):
    """Discriminator res-block (EMIXER table 8): ReLU, conv3x3, ReLU, conv3x3, 2x average pool,
    plus a 1x1-conv (pooled) shortcut. The first block of a network skips the leading ReLU so the
    raw image is not clipped."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True,
                 preactivation: bool = True, spectral: bool = True):
        super().__init__()
        self.conv1 = sn(nn.Conv2d(in_channels, out_channels, 3, padding=1), spectral)
        self.conv2 = sn(nn.Conv2d(out_channels, out_channels, 3, padding=1), spectral)
        self.shortcut = (sn(nn.Conv2d(in_channels, out_channels, 1), spectral)
                         if in_channels != out_channels or downsample else nn.Identity())
        self.downsample = downsample
        self.preactivation = preactivation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        skip = self.shortcut(x)
        if self.downsample:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return h + skip


class ImageEncoder(nn.Module):
    """A stack of down res-blocks from (B, C, S, S) to 4x4, one more block at 4x4, ReLU and a sum
    over positions: the discriminator trunk of BigGAN, reused by D_image, D_joint and F's encoder."""

    def __init__(self, image_size: int, in_channels: int, width: int, spectral: bool = True,
                 max_multiplier: int = 8):
        super().__init__()
        blocks, channels, size, i = [], in_channels, image_size, 0
        while size > 4:
            out = width * min(2**i, max_multiplier)
            blocks.append(ResBlockDown(channels, out, downsample=True, preactivation=i > 0, spectral=spectral))
            channels, size, i = out, size // 2, i + 1
        blocks.append(ResBlockDown(channels, channels, downsample=False, spectral=spectral))
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(x)).sum(dim=(2, 3))


def embed_tokens(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Word embeddings of token ids (long) or of word distributions / one-hot vectors (float, last
    dim = vocabulary): the same table serves real reports and differentiable generated ones."""
    if tokens.dtype == torch.long:
        return F.embedding(tokens, weight)
    return tokens @ weight


def with_input_channels(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """A torchvision ResNet stem convolution rebuilt for `channels` input channels (grey films instead
    of RGB), initialised as torchvision initialises it."""
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


class ResNetEncoder(nn.Module):
    """A torchvision ResNet (basic blocks, batch norm, no pretrained weights) from (B, C, S, S) images
    to its (B, 512) pooled features: a classifier backbone, as the paper's report encoder is.
    `blocks` per stage: (2, 2, 2, 2) is ResNet-18, (1, 1, 1, 1) a half-cost ResNet-10."""

    def __init__(self, in_channels: int, blocks: tuple[int, int, int, int] = (2, 2, 2, 2)):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, list(blocks))
        net.conv1 = with_input_channels(net.conv1, in_channels)
        net.fc = nn.Identity()
        self.net = net
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
