"""The wide ResNet's forward and initialisation against the official libml/models.py ResNet,
written here independently with torch.nn.functional from the same weights:

    residual(x0, filters, stride, activate_before_residual):
        x = lrelu(bn(x0)); if activate_before_residual: x0 = x
        x = conv3x3(lrelu(bn(conv3x3(x, stride))))
        if channels(x0) != filters: x0 = conv1x1(x0, stride)
        return x0 + x
    classifier: conv3x3 to 16; per scale s: residual(filters << s, stride 2 if s else 1,
        activate_before_residual = s == 0), then repeat - 1 x residual(filters << s);
        lrelu(bn) -> mean over H, W -> dense

with TF's 'same' padding (a stride-2 3x3 conv on an even side pads 0 before and 1 after) and
conv kernels ~ N(0, 2 / (k * k * filters)): the fan-out, `rsqrt(0.5 * k * k * f)` with f the
layer's output filters.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mixmatch_core.models import build_model

SLOPE, EPS = 0.1, 1e-3


def conv(x, w, b, stride=1):
    k = w.shape[-1]
    if stride == 1:
        return F.conv2d(x, w, b, padding=k // 2)
    n = x.shape[-1]
    total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
    return F.conv2d(F.pad(x, (total // 2, total - total // 2) * 2), w, b, stride=stride)


def bn_lrelu(x, sd, name):
    y = F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                     sd[f"{name}.bias"], training=False, eps=EPS)
    return F.leaky_relu(y, SLOPE)


def residual(x0, sd, name, filters, stride, activate_before_residual):
    x = bn_lrelu(x0, sd, f"{name}.bn1")
    if activate_before_residual:
        x0 = x
    x = conv(x, sd[f"{name}.conv1.weight"], sd[f"{name}.conv1.bias"], stride)
    x = conv(bn_lrelu(x, sd, f"{name}.bn2"), sd[f"{name}.conv2.weight"], sd[f"{name}.conv2.bias"])
    if x0.shape[1] != filters:
        x0 = conv(x0, sd[f"{name}.shortcut.weight"], sd[f"{name}.shortcut.bias"], stride)
    return x0 + x


def official_resnet(x, sd, filters, scales, repeat):
    y = conv(x, sd["stem.weight"], sd["stem.bias"])
    i = 0
    for scale in range(scales):
        y = residual(y, sd, f"blocks.{i}", filters << scale, 2 if scale else 1, scale == 0)
        i += 1
        for _ in range(repeat - 1):
            y = residual(y, sd, f"blocks.{i}", filters << scale, 1, False)
            i += 1
    y = bn_lrelu(y, sd, "bn").mean((2, 3))
    return F.linear(y, sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("name, filters", [("wrn16_1", 16), ("wrn16_2", 32)])   # 16: stage 1 keeps the stem's width
def test_wide_resnet_forward_is_the_official_resnet_on_the_same_weights(name, filters):
    torch.manual_seed(0)
    model = build_model(name, 10, 3, scales=3).eval()
    with torch.no_grad():          # every weight, bias and statistic matters: none at its initial value
        for key, t in model.state_dict().items():
            if key.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.3)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want = official_resnet(x, model.state_dict(), filters, scales=3, repeat=2)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer, in_ch, out_ch, k", [
    ("stem", 3, 16, 3), ("blocks.1.conv1", 32, 64, 3), ("blocks.1.shortcut", 32, 64, 1),
    ("blocks.2.conv1", 64, 128, 3)])
def test_conv_kernels_are_drawn_with_the_fan_out_of_the_official_initializer(layer, in_ch, out_ch, k):
    torch.manual_seed(0)
    w = build_model("wrn10_2", 10, 3).state_dict()[f"{layer}.weight"]
    assert tuple(w.shape) == (out_ch, in_ch, k, k)
    fan_out_std = math.sqrt(2 / (k * k * out_ch))
    tolerance = 4 / math.sqrt(2 * w.numel())          # ~4 standard errors of a sample std
    assert abs(w.std().item() / fan_out_std - 1) < tolerance
    assert abs(math.sqrt(out_ch / in_ch) - 1) > 3 * tolerance      # fan-in would be told apart
