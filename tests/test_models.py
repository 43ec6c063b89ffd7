"""Specification of models.py: the official WRN transcription, the small CNN, fp32 batch norm."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixmatch_core.config import ConfigError
from mixmatch_core.models import BatchNorm2d, Conv2dSame, WideResNet, build_model, official_scales


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, channels, size", [
    ("small_cnn", 1, 8), ("small_cnn", 3, 32), ("wrn10_1", 1, 8), ("wrn10_1", 3, 32), ("wrn28_2", 3, 8),
])
def test_output_is_logits_per_class(name, channels, size):
    torch.manual_seed(0)
    out = build_model(name, 7, channels)(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_wrn28_2_has_exactly_the_official_1_469_642_parameters():
    # The official tf.layers.conv2d keeps its default use_bias=True: 2,032 conv biases. A WRN
    # without them (a common port) has 1,467,610; REFERENCE.md: about 1.47 M.
    assert n_params(build_model("wrn28_2", 10, 3)) == 1_469_642
    convs = [m for m in build_model("wrn28_2", 10, 3).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs) and sum(c.bias.numel() for c in convs) == 2_032


def test_wrn28_2_has_the_official_stage_widths():
    model = build_model("wrn28_2", 10, 3)
    assert model.stem.out_channels == 16
    assert [b.conv1.out_channels for b in model.blocks] == [32] * 4 + [64] * 4 + [128] * 4
    assert [b.conv1.stride[0] for b in model.blocks] == [1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]
    assert [b.activate_before_residual for b in model.blocks] == [True] + [False] * 11
    assert [b.shortcut is not None for b in model.blocks] == [True, False, False, False] * 3


def test_wrn28_large_has_about_26_million_parameters():
    assert 25_000_000 <= n_params(build_model("wrn28_large", 100, 3)) <= 27_000_000  # no forward


def test_scales_adds_a_stage():
    model = build_model("wrn10_1", 10, 3, scales=4)
    assert model.fc.in_features == 16 << 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("width, scales", [(32, 3), (96, 5), (64, 4), (8, 1), (28, 3)])
def test_auto_scales_is_the_official_ceil_log2_width_minus_2(width, scales):
    # libml/utils.py ilog2 = ceil(log2): 96 px gives 5, so runs/table2.sh passes --scales=4.
    assert official_scales(width) == scales
    model = build_model("wrn10_1", 10, 3, scales=0, image_width=width)
    assert model.fc.in_features == 16 << (scales - 1)


def test_stl10_wrn28_2_has_four_stages_up_to_256_channels():
    model = build_model("wrn28_2", 10, 3, scales=4, image_width=96)   # the STL-10 preset
    assert [b.conv1.out_channels for b in model.blocks] == [32] * 4 + [64] * 4 + [128] * 4 + [256] * 4
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 10)


def test_explicit_scales_wins_over_the_image_width():
    assert build_model("wrn10_1", 10, 3, scales=2, image_width=96).fc.in_features == 32


def test_small_cnn_has_no_stages_and_ignores_scales():
    assert n_params(build_model("small_cnn", 10, 3, scales=5)) == n_params(build_model("small_cnn", 10, 3))


@pytest.mark.parametrize("name, momentum", [("wrn10_1", 0.001), ("small_cnn", 0.01)])
def test_batch_norm_is_fp32_batch_norm_with_tf_momentum_and_epsilon(name, momentum):
    bns = [m for m in build_model(name, 10, 3).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(type(m) is BatchNorm2d for m in bns)
    assert all(m.momentum == momentum and m.eps == 1e-3 for m in bns)


@pytest.mark.parametrize("name", ["wrn10_1", "small_cnn"])
def test_every_activation_is_leaky_relu_with_slope_0_1(monkeypatch, name):
    slopes, leaky_relu = [], F.leaky_relu

    def recording(x, negative_slope=0.01, inplace=False):
        slopes.append(negative_slope)
        return leaky_relu(x, negative_slope, inplace)
    model = build_model(name, 10, 3)
    monkeypatch.setattr(F, "leaky_relu", recording)
    model(torch.randn(2, 3, 8, 8))
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert len(slopes) == n_bn and set(slopes) == {0.1}  # one activation after each batch norm


@pytest.mark.parametrize("name", ["wrn10_1", "small_cnn"])
def test_batch_norm_computes_in_fp32_under_bf16_autocast(monkeypatch, name):
    seen, batch_norm = [], F.batch_norm

    def recording(x, *args, **kwargs):
        seen.append(x.dtype)
        return batch_norm(x, *args, **kwargs)
    torch.manual_seed(0)
    model = build_model(name, 10, 3)
    monkeypatch.setattr(F, "batch_norm", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 16, 16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert seen and set(seen) == {torch.float32}
    assert all(b.running_mean.dtype == torch.float32 for b in model.modules() if isinstance(b, BatchNorm2d))


def test_batch_norm_returns_the_input_dtype_and_matches_fp32():
    torch.manual_seed(0)
    bn, x = BatchNorm2d(4), torch.randn(8, 4, 3, 3).bfloat16()
    out = bn(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, BatchNorm2d(4)(x.float()).bfloat16())


@pytest.mark.parametrize("name", ["wrn10_1", "small_cnn"])
def test_channels_last_forward_equals_contiguous_forward(name):
    torch.manual_seed(0)
    model, x = build_model(name, 10, 3), torch.randn(4, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [8, 7, 32])
def test_strided_conv_pads_like_tensorflow_same(size):
    # TF 'same', stride 2, k 3: out = ceil(n / 2); even n pads 0 before and 1 after.
    conv, x = Conv2dSame(2, 3, 3, stride=2), torch.randn(1, 2, size, size)
    before = 0 if size % 2 == 0 else 1
    after = 1
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, conv.bias, stride=2)
    assert conv(x).shape[-1] == math.ceil(size / 2)
    assert torch.allclose(conv(x), expected)


def test_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    model = build_model("wrn28_2", 10, 3)
    w = model.blocks[-1].conv2.weight  # 128 x 128 x 3 x 3: 147,456 samples
    assert abs(w.std().item() / math.sqrt(2 / (9 * 128)) - 1) < 0.02
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert (model.fc.bias == 0).all()
    assert abs(model.fc.weight.std().item() / math.sqrt(2 / (128 + 10)) - 1) < 0.1  # Glorot normal
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)


def test_dense_kernels_are_drawn_as_tf_glorot_normal_draws_them():
    """TF 1.14's tf.glorot_normal_initializer (libml/models.py's dense layer) is VarianceScaling
    (scale 1, fan_avg, truncated_normal): N(0, s) with s = sqrt(1 / fan_avg) / 0.87962566,
    redrawn beyond 2 s. The reference below draws exactly that in numpy; ours must match it in
    distribution (Kolmogorov-Smirnov) and never exceed the cut. xavier_normal_ (the same
    variance, no cut) fails both."""
    from scipy.stats import ks_2samp

    from mixmatch_core.models import _init_official
    fan_in, fan_out = 1500, 500
    torch.manual_seed(0)
    layer = torch.nn.Linear(fan_in, fan_out)
    _init_official(layer)
    ours = layer.weight.detach().double().flatten().numpy()
    s = np.sqrt(1.0 / ((fan_in + fan_out) / 2.0)) / 0.87962566103423978
    z = np.random.default_rng(0).normal(0.0, s, 3 * ours.size)
    reference = z[np.abs(z) <= 2 * s][:ours.size]
    assert np.abs(ours).max() <= 2 * s * (1 + 1e-6)
    assert ks_2samp(ours, reference).statistic < 0.005
    assert abs(ours.std() / np.sqrt(2.0 / (fan_in + fan_out)) - 1) < 0.01     # Glorot's variance
    assert (layer.bias == 0).all()


@pytest.mark.parametrize("name", ["resnet50", "wrn28", "wrn28_0", "WRN28_2"])
def test_unknown_model_name_raises_one_line_config_error(name):
    with pytest.raises(ConfigError) as e:
        build_model(name, 10, 3)
    assert str(e.value) == f"model: unknown '{name}'; allowed: wrn28_2, wrn28_large, wrnD_K, small_cnn, small_cnnW (e.g. small_cnn16)"


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(ConfigError, match="^model: "):
        build_model("wrn27_2", 10, 3)
    assert isinstance(build_model("wrn16_1", 10, 3), WideResNet)


def test_small_cnn_width_suffix_scales_the_channels():
    narrow, wide = build_model("small_cnn16", 10, 1), build_model("small_cnn", 10, 1)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide) / 3 and narrow(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
