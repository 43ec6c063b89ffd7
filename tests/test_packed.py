"""benchmarks/packed.py: N models packed into one (grouped convolutions) stay N independent models.

The central test trains N small WRNs for two MixMatch steps packed and one by one and asks for
the same losses and updated weights, EMA weights and BN running statistics per model, each model
with its own initial weights, images, augmentations and MixUp draws (fp32 on CPU; tolerances in
benchmarks/packed.py). The others pin the pieces: the packed forward, unpacking, the reference
step against the trainer's own MixMatch losses, and independent per-model draws.
"""

import copy

import pytest
import torch

from benchmarks import packed as pk
from mixmatch_core import methods
from mixmatch_core.augment import AugmentSpec
from mixmatch_core.config import resolve
from mixmatch_core.methods.common import sample_lambda
from mixmatch_core.train import build_models
from mixmatch_core.views import Unlabeled

TINY_WRN = "wrn10_1"        # WRN-10-1: one block per stage, 16-32-64 channels; seconds on CPU


def _models(name: str, n: int, channels_last: bool = False) -> list[torch.nn.Module]:
    cfg = resolve({"model": name, "device": "cpu", "channels_last": channels_last, "progress": False})
    torch.manual_seed(0)
    return [build_models(cfg, 10, 3, torch.device("cpu"))[0] for _ in range(n)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # shared CI cores; the tests are small
    yield
    torch.set_num_threads(threads)


def test_a_packed_step_equals_n_separate_steps_of_the_trainer():
    r = pk.equality_check(TINY_WRN, n_models=3, steps=2, batch=8, device=torch.device("cpu"))
    assert r["within_tolerance"], r["steps"]
    assert len(r["steps"]) == 2 and all(row["loss_rel"] <= pk.LOSS_RTOL for row in r["steps"])


@pytest.mark.parametrize("name", [TINY_WRN, "small_cnn8"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train_mode", [True, False])
def test_the_packed_forward_gives_each_model_its_own_logits(name, channels_last, train_mode):
    models = _models(name, 3, channels_last)
    packed = pk.PackedModel(models, channels_last).train(train_mode)
    x = torch.randn(8, 3, 3, 32, 32)                         # [B, N, C, H, W]: each model its own images
    with torch.no_grad():
        out = packed(x)
        ref = torch.stack([m.train(train_mode)(x[:, n]) for n, m in enumerate(models)], dim=1)
    assert out.shape == (8, 3, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_unpacking_returns_each_models_state_dict_exactly():
    models = _models(TINY_WRN, 3)
    for sd, m in zip(pk.unpack(pk.PackedModel(models)), models):
        ref = m.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_packing_leaves_the_global_rng_where_it_was():
    models = _models(TINY_WRN, 2)
    state = torch.get_rng_state()
    pk.PackedModel(models)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_one_model_step_is_the_trainers_mixmatch_losses_given_its_draws():
    cfg = resolve({"model": TINY_WRN, "batch_size": 8, "device": "cpu", "progress": False})
    model = _models(TINY_WRN, 1)[0]
    twin = copy.deepcopy(model)
    x, y, u = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), [torch.randn(8, 3, 32, 32) for _ in range(2)]
    torch.manual_seed(5)           # mixup's own draws, in its order: the Beta weights, then the partners
    lam, perm = sample_lambda(24, cfg.alpha), torch.randperm(24)
    ours = pk.mixmatch_losses(cfg, model, pk.Draws(x, y, u, lam, perm), 75.0, packed=False)
    torch.manual_seed(5)
    theirs = methods.load("mixmatch").losses(cfg, twin, None, x, y, Unlabeled(u), 75.0)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_each_model_draws_its_own_images_and_mixup_randomness():
    torch.manual_seed(0)
    data = pk.PackedData(torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8), torch.arange(64) % 10, 32,
                         AugmentSpec(flip=True, pad=4), torch.device("cpu"))
    d = data.draw(n_models=4, batch=16, K=2, alpha=0.75)
    assert d.x.shape == (16, 4, 3, 32, 32) and d.y.shape == (16, 4) and len(d.u) == 2
    assert d.lam.shape == d.perm.shape == (48, 4)
    for a in range(4):
        assert sorted(d.perm[:, a].tolist()) == list(range(48))     # a permutation per model
        for b in range(a):
            assert not torch.equal(d.x[:, a], d.x[:, b]) and not torch.equal(d.u[0][:, a], d.u[0][:, b])
            assert not torch.equal(d.lam[:, a], d.lam[:, b]) and not torch.equal(d.perm[:, a], d.perm[:, b])
