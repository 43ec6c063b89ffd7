"""The classifiers: the official MixMatch wide ResNet (WRN-28-2 and relatives) and a small CNN.

Owns: `build_model(name, n_classes, in_channels, scales=, image_width=)`, the architectures
and their initialisation, and `BatchNorm2d` (batch norm that always computes in fp32).

The wide ResNet is a transcription of the official code (google-research/mixmatch,
libml/models.py `ResNet.classifier`, with `scales=3, filters=32, repeat=4` for WRN-28-2):
- stem: 3x3 conv to 16 channels;
- `scales` stages of `repeat = (depth - 4) / 6` pre-activation blocks with
  `filters << scale` channels, stride 1 for the first stage and 2 after;
- block: BN-lrelu -> conv3x3(stride) -> BN-lrelu -> conv3x3, plus the shortcut. The first
  block of the first stage uses the activated input for the shortcut
  (`activate_before_residual`); when the channel count changes the shortcut is a 1x1 conv
  (with the block's stride) of that tensor - of the raw block input in the later stages;
- head: BN-lrelu -> global average pool -> linear.
TF details kept: leaky ReLU slope 0.1; batch norm momentum 0.999 (TF) = 0.001 (PyTorch) and
epsilon 1e-3 (the tf.layers default); every conv has a bias (tf.layers.conv2d default
use_bias=True, zero-initialised); conv kernels ~ N(0, 2 / (k * k * out_channels)); dense
kernel Glorot-normal truncated at 2 std (TF 1.14's), zero bias; "same" padding as TF computes
it (for a stride-2 3x3 conv on an even input: 0 pixels before, 1 after, not PyTorch's 1 and 1).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError

LRELU_SLOPE = 0.1      # official: functools.partial(tf.nn.leaky_relu, alpha=0.1)
BN_MOMENTUM = 0.001    # PyTorch convention; TF momentum=0.999 (running = 0.999 * running + 0.001 * batch)
BN_EPS = 1e-3          # tf.layers.batch_normalization default epsilon
SMALL_CNN_BN_MOMENTUM = 0.01  # small_cnn runs ~1.5k steps (digits preset): a 100-step BN window


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that computes in fp32 whatever the input dtype (e.g. bf16 under autocast)
    and returns the input dtype: batch statistics of bf16 activations are too coarse, and the
    running statistics and affine parameters stay fp32 master copies."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return super().forward(x.float()).to(x.dtype)


def _bn(channels: int, momentum: float = BN_MOMENTUM) -> BatchNorm2d:
    return BatchNorm2d(channels, eps=BN_EPS, momentum=momentum)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's padding='same': total padding max((ceil(n / s) - 1) * s + k - n, 0)
    per axis, the odd pixel going after (bottom/right). For stride 1 and odd k this is the
    symmetric k // 2 of PyTorch, so only strided convs pay an explicit F.pad."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2 if symmetric else 0, bias=bias)
        self._explicit_pad = not symmetric

    def forward(self, x: Tensor) -> Tensor:
        if self._explicit_pad:
            k, s = self.kernel_size[0], self.stride[0]
            pads = []
            for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last axis (W) first
                total = max((math.ceil(n / s) - 1) * s + k - n, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return super().forward(x)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


class ResidualBlock(nn.Module):
    """Pre-activation residual block of the official `residual()` (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.bn1 = _bn(in_channels)
        self.conv1 = Conv2dSame(in_channels, out_channels, 3, stride)
        self.bn2 = _bn(out_channels)
        self.conv2 = Conv2dSame(out_channels, out_channels, 3)
        # Official: a 1x1 conv shortcut only when the channel count changes (it always does when
        # stride is 2 here); otherwise identity.
        self.shortcut = Conv2dSame(in_channels, out_channels, 1, stride) if in_channels != out_channels else None
        assert self.shortcut is not None or stride == 1

    def forward(self, x0: Tensor) -> Tensor:
        x = _lrelu(self.bn1(x0))
        if self.activate_before_residual:
            x0 = x
        x = self.conv2(_lrelu(self.bn2(self.conv1(x))))
        if self.shortcut is not None:
            x0 = self.shortcut(x0)
        return x0 + x


class WideResNet(nn.Module):
    """The official MixMatch ResNet classifier. depth = 6 * repeat + 4; `filters` channels in
    the first stage (16 * width for WRN-depth-width; 135 for the large model of Table 1);
    `scales` stages (3 for 32x32 inputs, 4 for STL-10's 96x96)."""

    def __init__(self, n_classes: int, in_channels: int = 3, depth: int = 28, filters: int = 32, scales: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"model: WRN depth must be 6n+4 >= 10, got {depth}")
        repeat = (depth - 4) // 6
        self.stem = Conv2dSame(in_channels, 16, 3)
        blocks, ch = [], 16
        for scale in range(scales):
            out = filters << scale
            blocks.append(ResidualBlock(ch, out, stride=2 if scale else 1, activate_before_residual=scale == 0))
            blocks += [ResidualBlock(out, out, 1, False) for _ in range(repeat - 1)]
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.bn = _bn(ch)
        self.fc = nn.Linear(ch, n_classes)
        _init_official(self)

    def embed(self, x: Tensor) -> Tensor:
        """The pooled features the head reads (official `embeds`; ReMixMatch's rotation head too)."""
        return _lrelu(self.bn(self.blocks(self.stem(x)))).mean((2, 3))  # global average pool over H, W

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))


class SmallCNN(nn.Module):
    """A CPU-scale classifier (~0.14 M params): five conv3x3-BN-lrelu blocks, 32-32-64(/2)-64-
    128(/2) channels, global average pool, linear. Works from 8x8 (digits) to 32x32 inputs.
    It has batch norm, because MixMatch's batch-norm handling (interleave, stats of the
    label-guessing pass discarded) is part of what the small runs must exercise."""

    def __init__(self, n_classes: int, in_channels: int = 1, bn_momentum: float = SMALL_CNN_BN_MOMENTUM,
                 width: int = 32):
        super().__init__()
        layers, ch = [], in_channels
        w = width
        for out, stride in ((w, 1), (w, 1), (2 * w, 2), (2 * w, 1), (4 * w, 2)):
            # No conv bias: the following batch norm's shift makes it redundant.
            layers += [Conv2dSame(ch, out, 3, stride, bias=False), _bn(out, bn_momentum), nn.LeakyReLU(LRELU_SLOPE)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, n_classes)
        _init_official(self)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))


TRUNCATED_NORMAL_STD = 0.87962566103423978   # std of N(0, 1) truncated to [-2, 2] (TF's constant)


def _init_official(model: nn.Module) -> None:
    """Official initialisation: conv kernel ~ N(0, std = sqrt(2 / (k * k * out_channels)))
    (tf.random_normal_initializer(stddev=rsqrt(0.5 * k * k * f))), conv bias 0; batch norm
    scale 1, shift 0; dense kernel as TF 1.14's tf.glorot_normal_initializer() draws it, bias 0.
    That initializer is VarianceScaling(1.0, "fan_avg", "truncated_normal"): a normal with
    std sqrt(2 / (fan_in + fan_out)) / 0.8796 (0.8796 is the std of a unit normal truncated at
    +-2), cut at 2 of its own std, so the drawn weights have Glorot's variance and never exceed
    2.27 Glorot std. torch's xavier_normal_ has the variance but not the truncation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            std = math.sqrt(2.0 / (m.in_features + m.out_features)) / TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(m.weight, 0.0, std, -2.0 * std, 2.0 * std)
            nn.init.zeros_(m.bias)


MODEL_NAMES = "wrn28_2, wrn28_large, wrnD_K, small_cnn, small_cnnW (e.g. small_cnn16)"
LARGE_FILTERS = 135  # Table 1's large model: WRN-28 with 135 filters in the first stage (~26 M params)


def official_scales(image_width: int) -> int:
    """The official default number of WRN stages, `FLAGS.scales or (ilog2(width) - 2)` with
    libml/utils.py's ilog2(x) = ceil(log2(x)): 3 at 32 px, 1 at 8 px, and 5 at STL-10's 96 px,
    which is why runs/table2.sh passes --scales=4 explicitly (our STL-10 preset does the same).
    At least 1 (the official formula gives no stage at all below 5 px)."""
    return max(1, math.ceil(math.log2(image_width)) - 2)


def build_model(name: str, n_classes: int, in_channels: int, *, scales: int = 0, image_width: int = 32,
                **kwargs) -> nn.Module:
    """The classifier called `name` (`Config.model`): `wrn{D}_{K}` = WRN-D-K (16 * K filters in
    the first stage), `wrn28_large`, or `small_cnn`. `scales` (`Config.scales`) is the WRN's
    number of stages, 0 = `official_scales(image_width)`; small_cnn has no stages and ignores
    it. Other kwargs go to the constructor (e.g. `bn_momentum` for small_cnn)."""
    m = re.fullmatch(r"small_cnn(\d*)", name)
    if m and (not m[1] or int(m[1]) >= 4):
        # small_cnnW: first-block width W (default 32); compute scales with W^2.
        return SmallCNN(n_classes, in_channels, width=int(m[1] or 32), **kwargs)
    scales = scales or official_scales(image_width)
    if name == "wrn28_large":
        return WideResNet(n_classes, in_channels, depth=28, filters=LARGE_FILTERS, scales=scales, **kwargs)
    m = re.fullmatch(r"wrn(\d+)_(\d+)", name)
    if m and int(m[2]) >= 1:
        return WideResNet(n_classes, in_channels, depth=int(m[1]), filters=16 * int(m[2]), scales=scales, **kwargs)
    raise ConfigError(f"model: unknown '{name}'; allowed: {MODEL_NAMES}")
