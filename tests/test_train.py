"""The training loop: weight decay, EMA, resume, non-finite losses, and every fast path on CPU."""

import pytest
import torch

from mixmatch_core import methods
from mixmatch_core.config import resolve
from mixmatch_core.data import DeviceData, load_dataset
from mixmatch_core.models import build_model
from mixmatch_core.checkpoint import CheckpointError, load_checkpoint
from mixmatch_core.train import TrainingFailed, decay_params, ema_update, train, train_step

TINY = dict(dataset="digits", n_labeled=50, steps=20, eval_every=10, median_of=2, log_every=5, batch_size=16,
            rampup_steps=10, progress=False, device="cpu")


def tiny(tmp_path, **kw):
    return resolve({**TINY, "out_dir": str(tmp_path / "runs"), **kw})


def test_weight_decay_touches_only_conv_and_linear_kernels():
    model = build_model("small_cnn", 10, 1)
    decayed = {id(p) for p in decay_params(model)}
    for name, p in model.named_parameters():
        is_kernel = name.endswith("weight") and p.ndim > 1
        assert (id(p) in decayed) == is_kernel, name


def test_ema_update_is_decay_weighted_average():
    ema, live = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    ema_update(ema, live, 0.75)
    assert torch.allclose(ema[0], torch.tensor([1.5, 3.0]))


def test_run_reports_median_of_last_evaluations(tmp_path):
    r = train(tiny(tmp_path))
    errs = [h["test_error"] for h in r.history]
    assert len(errs) == 2 and r.metrics["error"] == pytest.approx(sum(errs) / 2)   # median of 2
    assert r.metrics["error_last"] == errs[-1] and r.metrics["error_best"] == min(errs)


class Stop(Exception):
    pass


def _stop_at(step):
    def on_eval(s, h):
        if s == step:
            raise Stop
    return on_eval


def test_resume_ends_with_exactly_the_numbers_of_an_uninterrupted_run(tmp_path):
    full = train(tiny(tmp_path / "a", steps=30))
    cfg = tiny(tmp_path / "b", steps=30)
    with pytest.raises(Stop):
        train(cfg, on_eval=_stop_at(20))        # dies right after the checkpoint at step 20
    resumed = train(cfg)
    assert [h for h in resumed.history] == full.history
    assert resumed.metrics == full.metrics
    a = torch.load(f"{tiny(tmp_path / 'a', steps=30).run_dir}/ckpt.pt", weights_only=True)
    b = torch.load(f"{cfg.run_dir}/ckpt.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_rerunning_a_finished_run_trains_nothing_and_reports_the_same(tmp_path):
    cfg = tiny(tmp_path)
    first = train(cfg)
    again = train(cfg, on_eval=lambda s, h: pytest.fail("trained again"))
    assert again.metrics == first.metrics


def test_non_finite_loss_fails_the_run_with_a_clear_reason(tmp_path):
    with pytest.raises(TrainingFailed, match="non-finite loss"):
        train(tiny(tmp_path, lambda_u=1e40, rampup_steps=0))


def test_foreign_checkpoint_is_rejected_with_its_path(tmp_path):
    cfg = tiny(tmp_path)
    other = tiny(tmp_path, seed=2)
    train(other)
    import shutil
    from pathlib import Path
    Path(cfg.run_dir).mkdir(parents=True)
    shutil.copy(f"{other.run_dir}/ckpt.pt", f"{cfg.run_dir}/ckpt.pt")
    with pytest.raises(CheckpointError, match="ckpt.pt.*another config"):
        load_checkpoint(Path(cfg.run_dir) / "ckpt.pt", cfg)


@pytest.mark.parametrize("variant", ["supervised", "no_mixup", "k1", "mixup_separate", "ema_guess", "no_ema"])
def test_every_variant_trains(tmp_path, variant):
    r = train(tiny(tmp_path, variant=variant, steps=10, eval_every=5))
    assert r.status == "FINISHED" and 0 <= r.metrics["error"] <= 100


def test_fused_bn_mode_trains(tmp_path):
    assert train(tiny(tmp_path, bn_mode="fused", steps=10, eval_every=5)).status == "FINISHED"


def test_validation_split_is_evaluated(tmp_path):
    r = train(tiny(tmp_path, val_size=100, steps=10, eval_every=5))
    assert "val_error" in r.metrics and "val_error_ema" in r.history[0]


@pytest.mark.parametrize("opts", [dict(amp="bf16", channels_last=False), dict(channels_last=False),
                                  dict(amp="bf16", channels_last=True)])
def test_fast_paths_train_on_cpu(tmp_path, opts):
    r = train(tiny(tmp_path, steps=10, eval_every=5, **opts))
    assert r.status == "FINISHED" and r.metrics["error"] < 100


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_the_compiled_region_has_no_graph_break(amp):
    """What compile=true compiles (the model's forward, in training mode, channels_last, under
    the step's autocast) is one graph: nothing falls back to Python between kernels, which
    CUDA graphs (compile_mode=reduce-overhead) need."""
    cfg = resolve({**TINY, "amp": amp})
    model = build_model(cfg.model, 10, 1).to(memory_format=torch.channels_last).train()
    x = torch.randn(16, 1, 8, 8).to(memory_format=torch.channels_last)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else __import__("contextlib").nullcontext()
    with ctx:
        report = torch._dynamo.explain(model)(x)
    assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons


@pytest.mark.slow     # the suite's one cold inductor compile
def test_a_compiled_run_matches_eager_and_resumes_exactly(tmp_path):
    """A compiled run trains to the end on the CPU (inductor: the one cold compile of the suite),
    with the same losses as eager within float tolerance over a few steps, and a compiled run
    killed after a checkpoint resumes to exactly the numbers of an uninterrupted compiled run.
    Inductor writes scalar C++ here (`cpp.vec_isa_ok = False`): what this checks is our use of
    torch.compile (the wrapped modules, their state, the resume), not inductor's vector code
    generation, and g++ builds the scalar kernels in about 12 s of CPU instead of 18 (session 9,
    Xeon). The GPU check compiles every mode for real."""
    import torch._inductor.config as inductor_config
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list
    try:
        with inductor_config.patch({"cpp.vec_isa_ok": False}):
            _compiled_matches_eager_and_resumes(tmp_path)
    finally:
        valid_vec_isa_list.cache_clear()     # it cached "no vector ISA" for the rest of the process


def _compiled_matches_eager_and_resumes(tmp_path):
    from benchmarks.step_time import ProjectStep
    from mixmatch_core.train import seed_everything
    ds = load_dataset("digits", "data")
    sums = {}
    for flag in (False, True):
        cfg = tiny(tmp_path / str(flag), compile=flag)
        seed_everything(cfg.seed)
        step = ProjectStep(cfg, DeviceData.build(ds, cfg.n_labeled, cfg.seed, 0, torch.device("cpu"), True))
        for _ in range(3):
            step()
        sums[flag] = step.acc.tolist()
    assert sums[True] == pytest.approx(sums[False], rel=1e-4, abs=1e-5)
    full = train(tiny(tmp_path / "full", steps=6, eval_every=3, compile=True))
    assert full.status == "FINISHED"
    cfg = tiny(tmp_path / "resumed", steps=6, eval_every=3, compile=True)
    with pytest.raises(Stop):
        train(cfg, on_eval=_stop_at(3))
    resumed = train(cfg)
    assert resumed.history == full.history and resumed.metrics == full.metrics


def _losses(opts, seed=0):
    cfg = resolve({**TINY, **opts})
    torch.manual_seed(seed)
    ds = load_dataset("digits", "data")
    data = DeviceData.build(ds, 50, 1, 0, torch.device("cpu"), cfg.channels_last)
    model = build_model("small_cnn", 10, 1)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.amp == "bf16" else \
        __import__("contextlib").nullcontext
    torch.manual_seed(seed)
    return [t.item() for t in train_step(cfg, methods.load(cfg.method), model, model, data, amp, 75.0)]


@pytest.mark.parametrize("opts,tol", [(dict(channels_last=True), 1e-5), (dict(amp="bf16", channels_last=False), 3e-2),
                                      (dict(amp="bf16", channels_last=True), 3e-2)])
def test_fast_paths_compute_the_same_losses_as_plain_fp32(opts, tol):
    plain = _losses(dict(channels_last=False))
    fast = _losses(opts)
    for a, b in zip(plain, fast):
        assert b == pytest.approx(a, rel=tol, abs=tol)


# ---- fp32 arithmetic on CUDA: the official code's strict fp32 unless tf32=true ---------------------
@pytest.fixture
def precision_flags():
    """The process-wide precision switches, restored after the test (on this CPU build they can be
    set and read without a GPU)."""
    b = torch.backends
    knobs = (b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul, b.mkldnn.matmul)
    saved, matmul = [k.fp32_precision for k in knobs], torch.get_float32_matmul_precision()
    yield knobs
    torch.set_float32_matmul_precision(matmul)
    for k, v in zip(knobs, saved):
        k.fp32_precision = v


def test_a_cuda_run_computes_strict_fp32_unless_tf32_is_set(precision_flags):
    """PyTorch ships TF32 for cuDNN convolutions (10-bit mantissa inputs); the official code ran
    TF1 fp32 on V100s. A CUDA run therefore switches it off, and tf32=true turns TF32 on for
    convolutions and matmuls alike. A CPU run leaves every switch as it found it."""
    from mixmatch_core.train import set_fp32_precision
    conv, rnn, cuda_matmul, cpu_matmul = precision_flags
    for k in (conv, rnn):
        k.fp32_precision = "tf32"            # PyTorch's shipped default for cuDNN
    set_fp32_precision(False, torch.device("cuda"))
    assert (conv.fp32_precision, rnn.fp32_precision, cuda_matmul.fp32_precision) == ("ieee", "ieee", "ieee")
    set_fp32_precision(True, torch.device("cuda", 0))
    assert (conv.fp32_precision, rnn.fp32_precision, cuda_matmul.fp32_precision) == ("tf32", "tf32", "tf32")
    torch.set_float32_matmul_precision("highest")
    conv.fp32_precision = "tf32"
    before = [k.fp32_precision for k in precision_flags]
    set_fp32_precision(True, torch.device("cpu"))
    set_fp32_precision(False, torch.device("cpu"))
    assert [k.fp32_precision for k in precision_flags] == before


@pytest.mark.parametrize("tf32", [False, True])
def test_before_torch_2_9_the_legacy_tf32_switch_is_set(precision_flags, monkeypatch, tf32):
    """torch < 2.9 has no per-operator fp32_precision: the run sets cudnn.allow_tf32 instead of
    failing (mixmatch_core/precision.py keeps that fallback)."""
    from mixmatch_core.train import set_fp32_precision
    with monkeypatch.context() as m:
        m.setattr(torch.backends.cudnn, "conv", None, raising=False)      # as on torch < 2.9
        set_fp32_precision(tf32, torch.device("cuda"))
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")


def test_a_run_sets_the_precision_of_its_config_on_its_device(tmp_path, monkeypatch):
    from mixmatch_core import train as train_mod
    seen = []
    monkeypatch.setattr(train_mod, "set_fp32_precision", lambda tf32, device: seen.append((tf32, device.type)))
    train(tiny(tmp_path, steps=2, eval_every=2, median_of=1, tf32=True))
    train(tiny(tmp_path / "b", steps=2, eval_every=2, median_of=1))
    assert seen == [(True, "cpu"), (False, "cpu")]


def test_tf32_is_part_of_a_runs_identity_only_when_set():
    base = resolve(dict(TINY, out_dir="runs"))
    assert "tf32" not in base.identity()                  # every earlier run keeps its cell_key
    assert resolve(dict(TINY, out_dir="runs", tf32=True)).cell_key != base.cell_key
