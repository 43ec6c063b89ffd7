"""Strong augmentation (issue #31): every device op against PIL called as the official code calls
it, CTAugment's policy / update / state against the official rules, RandAugment's draws.

The PIL references are benchmarks/pil_augment.py (libml/ctaugment.py and third_party/
auto_augment/augmentations.py of google-research/fixmatch, rewritten with the same PIL calls);
the numpy references of the policy and update rules are below. Images: CIFAR-10 test images
where ../shared/datasets/cifar10.npz exists, else scikit-learn digits upsampled to 32 x 32 and
tinted to RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import pil_augment as official

from mixmatch_core import ctaugment as cta
from mixmatch_core import image_ops as io
from mixmatch_core import randaugment as ra
from mixmatch_core.ctaugment import CTAugment, Policy
from mixmatch_core.strong_augment import strong_augment_error

CIFAR_NPZ = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "cifar10.npz"
N_IMAGES = 96
MAX_MEAN_ABS = 0.5  # intensity levels, the bound per op


def _images() -> np.ndarray:
    """uint8 [N_IMAGES, 32, 32, 3] real images."""
    if CIFAR_NPZ.exists():
        with np.load(CIFAR_NPZ) as d:
            return np.ascontiguousarray(d["x_test"][:N_IMAGES])
    from mixmatch_core.data import digits_arrays
    digits = np.round(digits_arrays()[0][:N_IMAGES] * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(d).resize((32, 32), Image.BILINEAR)) for d in digits])
    tint = np.random.default_rng(0).uniform(0.3, 1.0, (N_IMAGES, 1, 1, 3))
    return np.round(big[..., None] * tint).astype(np.uint8)


IMAGES = _images()


def _levels(name: str, n: int, seed: int) -> np.ndarray:
    """float32 [n, 2] levels in [0, 1): uniform, plus the ends 0 and the largest below 1."""
    lv = np.random.default_rng(seed).uniform(0, 1, (n, 2)).astype(np.float32)
    lv[:2, 0], lv[2:4, 1] = 0.0, np.nextafter(np.float32(1), np.float32(0))
    lv[4:6, 0] = np.nextafter(np.float32(1), np.float32(0))
    return lv


def _compare(name: str, images: np.ndarray, mode: str, seed: int = 1) -> tuple[float, int]:
    """(mean |ours - PIL|, max |ours - PIL|) in intensity levels over the images."""
    lv = _levels(name, len(images), seed)
    n_args = len(cta.OPS[name][0])
    ref = []
    for img, l in zip(images, lv):
        pil = Image.fromarray(img.squeeze(-1) if mode == "L" else img, mode)
        ref.append(np.asarray(official.CTA_OPS[name][1](pil, *(float(v) for v in l[:n_args]))))
    ref = np.stack(ref).reshape(images.shape).astype(np.int16)
    ours = cta.OPS[name][1](torch.from_numpy(images), torch.from_numpy(lv)).numpy().astype(np.int16)
    diff = np.abs(ours - ref)
    return float(diff.mean()), int(diff.max())


# Exact ops must match bit for bit; the bound of the others is the measured one (methods.md).
MAX_ABS = {name: 0 for name in cta.OPS}
DETERMINISTIC = sorted(set(cta.OPS) - {"cutout"})  # cutout draws its centre: tested below


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_cta_op_equals_pil_on_rgb_images(name):
    mean, worst = _compare(name, IMAGES, "RGB")
    print(f"{name}: mean |diff| {mean:.4f}, max {worst}")
    assert mean <= MAX_MEAN_ABS and worst <= MAX_ABS[name]


@pytest.mark.parametrize("name", sorted(set(DETERMINISTIC) - {"identity"}))
def test_cta_op_equals_pil_on_grayscale_images(name):
    gray = np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in IMAGES[:32]])[..., None]
    mean, worst = _compare(name, gray, "L", seed=2)
    assert mean <= MAX_MEAN_ABS and worst <= MAX_ABS[name]


@pytest.mark.parametrize("method", range(6))
def test_rescale_equals_pil_for_every_crop_size(method):
    """Every crop the level can produce (scale 0..0.25, 17 bins) with each resampling filter."""
    lv = np.stack([np.linspace(0, 0.999, 48), np.full(48, (method + 0.5) / 6)], 1).astype(np.float32)
    x = IMAGES[:48]
    ref = np.stack([np.asarray(official.rescale(Image.fromarray(img), float(a), float(b)))
                    for img, (a, b) in zip(x, lv)])
    ours = cta.OPS["rescale"][1](torch.from_numpy(x), torch.from_numpy(lv)).numpy()
    np.testing.assert_array_equal(ours, ref)


# ------------------------------------------------------------------------------- cutout

def test_cta_cutout_paints_the_official_box_on_a_non_square_image():
    x = np.ascontiguousarray(IMAGES[:40, :24])                       # 24 rows x 32 columns
    rng = np.random.default_rng(3)
    lv = rng.uniform(0, 1, (40, 2)).astype(np.float32)
    col, row = rng.integers(0, 32, 40), rng.integers(0, 24, 40)
    ref = np.stack([np.asarray(official.cutout_with_centre(Image.fromarray(img), float(l), int(c), int(r)))
                    for img, (l, _), c, r in zip(x, lv, col, row)])
    ours = cta.cutout_at(torch.from_numpy(x), torch.from_numpy(lv), torch.from_numpy(col), torch.from_numpy(row))
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_fixmatch_cutout_is_a_16_pixel_gray_square_drawn_per_image():
    x = torch.zeros(256, 32, 32, 3, dtype=torch.uint8)
    out = CTAugment().apply(x, Policy(torch.full((256, 0), 0), torch.zeros(256, 0, 2)), cutout=True)
    painted = (out == cta.CUTOUT_FILL).all(-1)
    columns, rows = painted.any(1).sum(1), painted.any(2).sum(1)
    assert (columns >= 8).all() and (rows >= 8).all()                # clipped at worst to 8
    assert columns.max() == 16 and rows.max() == 16 and painted.sum((1, 2)).max() == 256
    assert len({tuple(b.nonzero()[0].tolist()) for b in painted}) > 100  # a box per image


# --------------------------------------------------------------------- CTAugment's policy

def _as_official(policy: Policy) -> list[list[tuple[str, list[float]]]]:
    """Our policy tensors as libml's per-image [OP(name, levels)] lists."""
    out = []
    for ops, levels in zip(policy.ops.tolist(), policy.levels.tolist()):
        out.append([(cta.OP_NAMES[k], lv[:len(cta.OPS[cta.OP_NAMES[k]][0])]) for k, lv in zip(ops, levels)])
    return out


def _official_rates(aug: CTAugment) -> dict[str, list[np.ndarray]]:
    flat = aug.rates.numpy().astype(np.float32)
    rates, i = {}, 0
    for name, (bins, _) in cta.OPS.items():
        rates[name] = []
        for b in bins:
            rates[name].append(flat[i:i + b].copy())
            i += b
    return rates


def _set_rates(aug: CTAugment, name: str, level: int, values) -> None:
    k = cta.OP_NAMES.index(name)
    start = int(aug.offsets[k, level])
    aug.rates[start:start + len(values)] = torch.tensor(values)


POSTERIZE_RATES = [1.0, 0.9, 0.5, 0.1, 0.85, 1.0, 0.2, 0.95]


def test_train_policy_draws_bins_in_proportion_to_p_and_never_below_threshold():
    torch.manual_seed(0)
    aug = CTAugment(depth=2, threshold=0.8, decay=0.99)
    _set_rates(aug, "posterize", 0, POSTERIZE_RATES)
    pol = aug.policy(40000, probe=False)
    levels = pol.levels[..., 0][pol.ops == cta.OP_NAMES.index("posterize")]
    bins = (levels * 8).long()
    want = official.rate_to_p(np.array(POSTERIZE_RATES, np.float32), 0.99, 0.8)
    want = want / want.sum()
    got = np.bincount(bins.numpy(), minlength=8) / len(bins)
    assert got[want == 0].sum() == 0
    np.testing.assert_allclose(got, want, atol=5 * np.sqrt(0.25 / len(bins)))
    frac = levels * 8 - bins
    assert abs(frac.mean().item() - 0.5) < 0.02                      # (bin + U(0, 1)) / 8


def test_policy_draws_each_op_uniformly_and_probe_levels_uniformly():
    torch.manual_seed(1)
    pol = CTAugment().policy(19000, probe=True)
    counts = np.bincount(pol.ops.flatten().numpy(), minlength=19) / pol.ops.numel()
    np.testing.assert_allclose(counts, 1 / 19, atol=0.006)
    first = pol.levels[..., 0][pol.ops != cta.OP_NAMES.index("identity")]
    assert 0 <= first.min() and first.max() < 1 and abs(first.mean().item() - 0.5) < 0.01
    assert (pol.levels[..., 1][pol.ops != cta.OP_NAMES.index("rescale")] == 0).all()


def test_remixmatch_variant_draws_segments_between_bins():
    torch.manual_seed(2)
    aug = CTAugment(variant="remixmatch")
    _set_rates(aug, "posterize", 0, POSTERIZE_RATES)
    pol = aug.policy(40000, probe=False)
    levels = pol.levels[..., 0][pol.ops == cta.OP_NAMES.index("posterize")]
    p = official.rate_to_p(np.array(POSTERIZE_RATES, np.float32), 0.99, 0.8)
    want = (p[1:] + p[:-1]) / (p[1:] + p[:-1]).sum()
    got = np.bincount((levels * 7).long().numpy(), minlength=7) / len(levels)
    np.testing.assert_allclose(got, want, atol=5 * np.sqrt(0.25 / len(levels)))


def test_each_image_gets_its_own_ops_and_levels():
    torch.manual_seed(3)
    x = torch.from_numpy(IMAGES[:1]).expand(64, -1, -1, -1).contiguous()
    aug = CTAugment()
    pol = aug.policy(64, probe=False)
    out = aug.apply(x, pol)
    assert len({tuple(r) for r in pol.ops.tolist()}) > 30
    assert len({o.numpy().tobytes() for o in out}) > 30
    i = next(i for i, ops in enumerate(pol.ops.tolist()) if cta.OP_NAMES.index("cutout") not in ops)  # no RNG
    alone = aug.apply(x[i:i + 1], Policy(pol.ops[i:i + 1], pol.levels[i:i + 1]))
    torch.testing.assert_close(out[i:i + 1], alone)


def test_batch_apply_equals_ops_applied_one_image_at_a_time_on_both_dispatch_paths():
    torch.manual_seed(4)
    aug = CTAugment()
    pol = aug.policy(24, probe=False)
    pol = Policy(torch.where(pol.ops == cta.OP_NAMES.index("cutout"), 0, pol.ops), pol.levels)  # no RNG
    x = torch.from_numpy(IMAGES[:24])
    want = torch.stack([aug.apply(x[i:i + 1], Policy(pol.ops[i:i + 1], pol.levels[i:i + 1]))[0]
                        for i in range(24)])
    for by_index in (True, False):
        got = x
        for d in range(2):
            got = io.apply_per_image(got, pol.ops[:, d], aug._ops, pol.levels[:, d], by_index=by_index)
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------ CTAugment's learning

def _official_update(rates, policies, proximities, decay):
    for policy, proximity in zip(policies, proximities):               # cta/lib/train.py order
        for k, bins in policy:
            for p, rate in zip(bins, rates[k]):
                p = int(p * len(rate) * 0.999)
                rate[p] = rate[p] * decay + proximity * (1 - decay)


def test_update_rates_equals_the_official_sequential_loop_with_repeated_bins():
    torch.manual_seed(5)
    aug = CTAugment(decay=0.9)                                        # a large step: order shows
    pol = aug.policy(64, probe=True)
    few = torch.tensor([cta.OP_NAMES.index(n) for n in ("posterize", "rescale", "identity")])
    ops = few[torch.randint(0, 3, pol.ops.shape)]
    levels = torch.randint(0, 3, pol.levels.shape) / 3 + 0.01          # few distinct bins
    # a level just inside the last bin: int(level * n_bins * 0.999) updates the bin below it
    last_bin = torch.where(ops[:4] == cta.OP_NAMES.index("posterize"), 7.005 / 8, 16.005 / 17)
    levels[:4, :, 0] = last_bin
    pol = Policy(ops, torch.where(aug.bins[ops] > 0, levels, 0.0))
    prox = torch.rand(64)
    want = _official_rates(aug)
    _official_update(want, _as_official(pol), prox.numpy().astype(np.float32), 0.9)
    aug.update_rates(pol, prox)
    got = _official_rates(aug)
    for name in cta.OPS:
        for a, b in zip(got[name], want[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_proximity_is_one_minus_half_the_l1_distance_to_the_label():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(cta.proximity(probs, torch.tensor([0, 1])).numpy(),
                               [1 - 0.5 * (0.3 + 0.2 + 0.1), 1 - 0.5 * (0.1 + 0.9 + 0.8)], rtol=1e-6)


def test_state_dict_round_trips_through_a_weights_only_load(tmp_path):
    torch.manual_seed(6)
    aug = CTAugment()
    for _ in range(3):
        pol = aug.policy(64, probe=True)
        aug.update_rates(pol, torch.rand(64))
    torch.save(aug.state_dict(), tmp_path / "cta.pt")
    fresh = CTAugment()
    fresh.load_state_dict(torch.load(tmp_path / "cta.pt", weights_only=True))
    assert torch.equal(fresh.rates, aug.rates) and not torch.equal(fresh.rates, torch.ones_like(fresh.rates))
    torch.manual_seed(7)
    a = aug.policy(32, probe=False)
    torch.manual_seed(7)
    b = fresh.policy(32, probe=False)
    assert torch.equal(a.ops, b.ops) and torch.equal(a.levels, b.levels)


def test_stats_is_the_official_text():
    torch.manual_seed(8)
    aug = CTAugment()
    aug.update_rates(aug.policy(64, probe=True), torch.rand(64))
    rates = _official_rates(aug)
    want = "\n".join("%-16s    %s" % (k, " / ".join(" ".join("%.2f" % x for x in official.rate_to_p(r, 0.99, 0.8))
                                                     for r in rates[k]))
                     for k in sorted(cta.OPS))
    assert aug.stats() == want


# ------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    ({"augment": "autoaugment"}, "augment: 'autoaugment' is not one of ctaugment, randaugment"),
    ({"augment": "ctaugment", "cta_depth": 0}, "cta_depth: must be an integer >= 1"),
    ({"augment": "ctaugment", "cta_depth": 1.5}, "cta_depth: must be an integer >= 1"),
    ({"augment": "ctaugment", "cta_threshold": 1.0}, "cta_threshold: must be in [0, 1)"),
    ({"augment": "ctaugment", "cta_threshold": -0.1}, "cta_threshold: must be in [0, 1)"),
    ({"augment": "ctaugment", "cta_decay": 1.0}, "cta_decay: must be in (0, 1)"),
    ({"augment": "ctaugment", "cta_decay": 0.0}, "cta_decay: must be in (0, 1)"),
])
def test_bad_strong_augment_settings_are_one_line_naming_the_field(kwargs, message):
    error = strong_augment_error(**kwargs)
    assert error.startswith(message) and "\n" not in error


def test_the_official_settings_and_unset_fields_are_accepted():
    assert strong_augment_error("ctaugment", 2, 0.8, 0.99) is None
    assert strong_augment_error("randaugment", None, None, None) is None
    assert strong_augment_error() is None


def test_ctaugment_refuses_a_bad_setting_with_the_same_line():
    with pytest.raises(ValueError, match=r"^cta_threshold: must be in \[0, 1\), got 1.5$"):
        CTAugment(threshold=1.5)


# ------------------------------------------------------------ RandAugment (FixMatch RA)

def _ra_compare(pol: ra.RandPolicy, images: np.ndarray) -> np.ndarray:
    """|ours - official| in intensity levels, per pixel."""
    floats = images.astype(np.float32) * np.float32(2.0 / 255) - np.float32(1.0)  # libml/data.py
    want = np.stack([official.ra_apply(img, list(zip([ra.OP_NAMES[k] for k in o], m, a, g)), c)
                     for img, o, m, a, g, c in zip(floats, pol.ops.tolist(), pol.magnitudes.tolist(),
                                                   pol.applied.tolist(), pol.negate.tolist(),
                                                   pol.cutout_centre.tolist())])
    ours = ra.apply(torch.from_numpy(images), pol).numpy()
    return np.abs(ours - (want * 127.5 + 127.5))


@pytest.mark.parametrize("name", ra.OP_NAMES)
def test_randaugment_op_equals_the_official_pil_transform(name):
    n = 48
    torch.manual_seed(9)
    pol = ra.policy(n, 32, 32)
    k = torch.full((n,), ra.OP_NAMES.index(name))
    rotated_first = torch.arange(n) % 2 == 0  # half: Rotate, then the op (the alpha paths)
    op = torch.stack([torch.where(rotated_first, ra.OP_NAMES.index("Rotate"), k), k], 1)
    pol = ra.RandPolicy(op, pol.magnitudes, torch.ones(n, 2, dtype=torch.bool), pol.negate,
                        torch.full((n, 2), -100))                     # cutout off the image
    diff = _ra_compare(pol, IMAGES[:n])
    assert diff.max() <= 0.5 and diff.mean() <= MAX_MEAN_ABS


def test_randaugment_with_cutout_is_within_half_a_level_of_the_official_pipeline():
    torch.manual_seed(10)
    pol = ra.policy(64, 32, 32)
    diff = _ra_compare(pol, IMAGES[:64])
    gray = diff == 0.5
    assert diff.max() <= 0.5 and gray.any()                            # only the fill differs
    assert diff.mean() <= MAX_MEAN_ABS


def test_randaugment_draws_two_of_fourteen_ops_with_magnitude_1_to_9_half_applied():
    torch.manual_seed(11)
    pol = ra.policy(20000, 32, 32)
    counts = np.bincount(pol.ops.flatten().numpy(), minlength=14) / pol.ops.numel()
    np.testing.assert_allclose(counts, 1 / 14, atol=0.005)
    mags = np.bincount(pol.magnitudes.flatten().numpy(), minlength=10) / pol.ops.numel()
    assert mags[0] == 0 and np.allclose(mags[1:], 1 / 9, atol=0.005)
    assert abs(pol.applied.float().mean().item() - 0.5) < 0.01
    assert abs(pol.negate.float().mean().item() - 0.5) < 0.01
    assert pol.cutout_centre.min() == 0 and pol.cutout_centre.max() == 31


def test_randaugment_wrap_lowers_the_values_the_official_float_round_trip_lowers():
    x = np.arange(256, dtype=np.float32) * np.float32(2.0 / 255) - np.float32(1.0)
    np.testing.assert_array_equal(ra.wrap_lut().numpy(), np.uint8((x * 0.5 + 0.5) * 255.0))


# ------------------------------------------------------------------ no host round trip

def test_the_accelerator_path_never_reads_the_device_or_copies_host_data(monkeypatch):
    """What an accelerator runs (every op on the whole batch, kept by torch.where), after a first
    call has built the cached tables, makes no host sync and no host-to-device copy."""
    torch.manual_seed(12)
    x = torch.from_numpy(IMAGES[:16])
    aug = CTAugment()

    def step():
        aug.apply(x, aug.policy(16, probe=False), cutout=True, by_index=False)
        probs = torch.rand(16, 10).softmax(1)
        aug.update_rates(aug.policy(16, probe=True), cta.proximity(probs, torch.arange(16) % 10))
        ra.apply(x, ra.policy(16, 32, 32), by_index=False)
    step()

    def forbidden(*args, **kwargs):
        raise AssertionError("a host round trip")
    for name in ("item", "tolist", "nonzero", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "tensor", forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    step()
