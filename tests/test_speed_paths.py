"""The fast paths are the same computation, and the step loop never waits for the device.

tests/test_train.py checks that channels_last / bf16 give the same LOSSES on a fixed batch and
that every fast path trains. Here: the same GRADIENTS and the same PARAMETER UPDATE after one
full step (Adam, weight decay, EMA), that channels_last survives the step, that the loop makes
no host-device sync between log intervals, and that the step benchmark times the real step.
"""

import math
import sys

import pytest
import torch

from benchmarks.step_time import FloorStep, NaiveStep, ProjectStep, time_round_robin
from mixmatch_core.config import resolve
from mixmatch_core.methods import METHODS
from mixmatch_core.data import DeviceData, load_dataset, split_labeled
from mixmatch_core.train import seed_everything, train

train_mod = sys.modules["mixmatch_core.train"]   # the module (the package re-exports the function `train`)

TINY = dict(dataset="digits", n_labeled=50, batch_size=16, progress=False, device="cpu", median_of=1)


def tiny(tmp_path=None, **kw):
    extra = {"out_dir": str(tmp_path / "runs")} if tmp_path is not None else {}
    # A short MixMatch ramp-up (a base value, so baselines, which have no such field, ignore it).
    return resolve({**TINY, **extra, **kw}, base={"rampup_steps": 4})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and two threads on a busy machine wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "data")


def project_step(cfg, ds, seed: int = 1) -> ProjectStep:
    """The benchmark's (a) step, set up in train()'s order from the same seed."""
    seed_everything(seed)
    data = DeviceData.build(ds, cfg.n_labeled, cfg.seed, cfg.val_size, torch.device("cpu"), cfg.channels_last)
    return ProjectStep(cfg, data)


def one_step(cfg, ds) -> ProjectStep:
    step = project_step(cfg, ds)
    torch.manual_seed(123)          # the same batch, augmentation and MixUp draws for every setting
    step()
    return step


# ---- same gradients, same update -------------------------------------------------------------------
def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=0, atol=atol)


def test_channels_last_step_gives_the_same_gradients_and_parameters_within_1e_5(digits):
    plain, fast = one_step(tiny(channels_last=False), digits), one_step(tiny(channels_last=True), digits)
    ill_conditioned = total = 0
    for (name, p), q in zip(plain.model.named_parameters(), fast.model.parameters()):
        assert _close(p.grad, q.grad, 1e-5), f"gradient of {name}"
        # Adam's first update is lr * g / (|g| + eps), eps = 1e-8: where |g| is near eps it turns
        # rounding noise of 1e-9 (any other summation order would do the same) into 1e-5 of
        # update. Such elements are compared only against the update's own size (lr).
        ok = (p.grad.abs() > 1e-6) & (q.grad.abs() > 1e-6)
        assert _close(p[ok], q[ok], 1e-5), f"{name} after Adam + weight decay"
        assert _close(p[~ok], q[~ok], 2 * plain.cfg.lr), name
        ill_conditioned += int((~ok).sum())
        total += p.numel()
    assert ill_conditioned < 0.01 * total
    for (name, p), q in zip(plain.ema_model.named_parameters(), fast.ema_model.parameters()):
        assert _close(p, q, 1e-5), f"EMA {name}"
    for (name, b), c in zip(plain.model.named_buffers(), fast.model.buffers()):
        assert _close(b, c, 1e-5), f"BN buffer {name}"


@pytest.mark.parametrize("opts", [dict(amp="bf16", channels_last=False), dict(amp="bf16", channels_last=True)])
def test_bf16_step_gradients_point_the_same_way(digits, opts):
    plain, fast = one_step(tiny(channels_last=False), digits), one_step(tiny(**opts), digits)
    g0 = torch.cat([p.grad.flatten() for p in plain.model.parameters()])
    g1 = torch.cat([p.grad.flatten() for p in fast.model.parameters()])
    assert torch.nn.functional.cosine_similarity(g0, g1, dim=0) > 0.99
    assert (g1.norm() / g0.norm() - 1).abs() < 0.05
    for p in fast.model.parameters():          # master weights and their gradients stay fp32
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32


def test_channels_last_survives_the_optimiser_step_and_reaches_the_batches(digits):
    step = one_step(tiny(channels_last=True), digits)
    step()
    for model in (step.model, step.ema_model):
        for name, p in model.named_parameters():
            if p.dim() == 4:
                assert p.is_contiguous(memory_format=torch.channels_last), name
    x, _ = step.data.labeled_batch(4)
    assert x.is_contiguous(memory_format=torch.channels_last)


# ---- no host sync between log intervals ------------------------------------------------------------
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("opts", [dict(channels_last=False), dict(variant="ema_guess"),
                                  dict(amp="bf16", channels_last=True)]
                         + [dict(variant=m) for m in METHODS if m != "mixmatch"]
                         + [dict(variant="vat", amp="bf16")])
def test_training_steps_make_no_host_sync_between_log_intervals(tmp_path, monkeypatch, opts):
    n = 5
    cfg = tiny(tmp_path, steps=n, log_every=n, eval_every=n, **opts)
    steps_started = [0]
    real_step = train_mod.train_step

    def counting_step(*a, **kw):
        steps_started[0] += 1
        return real_step(*a, **kw)

    syncs = []

    def spy(name):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, **kw):
            caller = sys._getframe(1).f_code
            # Adam reads its step counters with .item(): they are host tensors (capturable=False),
            # so this is no device sync.
            if not (caller.co_name == "_get_value" and caller.co_filename.endswith("optimizer.py")):
                syncs.append((steps_started[0], name, f"{caller.co_filename}:{caller.co_name}"))
            return orig(self, *a, **kw)
        return wrapper

    monkeypatch.setattr(train_mod, "train_step", counting_step)
    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    train(cfg)
    assert steps_started[0] == n
    # Setup (count 0) and the log/eval/checkpoint after step n may read the device; steps
    # 1..n-1 must not (each lies wholly between the start of its train_step and the next one's).
    inside = [s for s in syncs if 1 <= s[0] < n]
    assert inside == [], f"host syncs inside the step loop: {inside[:5]}"
    assert any(s[0] == n for s in syncs)          # the spy works: the log point does read


# ---- the benchmark measures the real step ------------------------------------------------------------
@pytest.mark.parametrize("opts", [dict(channels_last=False), dict(channels_last=True)])
def test_benchmark_project_step_is_bit_identical_to_train(tmp_path, digits, opts):
    n = 3
    cfg = tiny(tmp_path, steps=n, log_every=n, eval_every=n, **opts)
    train(cfg)
    ckpt = torch.load(f"{cfg.run_dir}/ckpt.pt", weights_only=True)
    step = project_step(cfg, digits, seed=cfg.seed)
    for _ in range(n):
        step()
    for k, v in step.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    for k, v in step.ema_model.named_parameters():   # EMA buffers are copied from the live model
        assert torch.equal(v, ckpt["ema"][k]), k


def test_floor_and_naive_steps_run_and_are_timed(digits):
    cfg = tiny()
    lab, unl, _ = split_labeled(digits.y_train, cfg.n_labeled, 10, 1, 0)
    fns = {"b": FloorStep("small_cnn", 10, 1, (8, 8), 16, 2, "none", False, torch.device("cpu")),
           "c": NaiveStep(cfg, digits, lab, unl, torch.device("cpu"))}
    out = time_round_robin(fns, steps=2, warmup=1, repeats=2, device=torch.device("cpu"), log=lambda m: None)
    assert {k: len(v) for k, v in out.items()} == {"b": 2, "c": 2}
    assert all(t > 0 for v in out.values() for t in v)
    assert len(fns["c"].log) == 5 and all(math.isfinite(v) for row in fns["c"].log for v in row)

