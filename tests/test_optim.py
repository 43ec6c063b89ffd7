"""optim.Adam against TF 1.x's ApplyAdam, computed independently in numpy with the official
shapes (one array per variable, float32 throughout, float32 beta powers multiplied after each
update), on gradients where TF's epsilon placement matters (around 1e-8) and where it does not."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mixmatch_core.optim import Adam

F32 = np.float32
SHAPES = [(3, 3, 2, 4), (4,), (5, 10)]          # a conv kernel (TF's HWIO), a bias, a dense kernel
SCALES = [1.0, 1e-8, 1e-3]                      # the 1e-8 variable is where torch.optim.Adam differs


def _grads(steps, seed=0):
    rs = np.random.RandomState(seed)
    return [[(rs.randn(*shape) * scale).astype(F32) for shape, scale in zip(SHAPES, SCALES)] for _ in range(steps)]


def tf_adam(init, grads, lr=0.002, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """TF's ApplyAdamNonCuda, use_nesterov=False, per variable; then _finish's power updates."""
    lr, beta1, beta2, epsilon, one = F32(lr), F32(beta1), F32(beta2), F32(epsilon), F32(1)
    var = [x.copy() for x in init]
    m = [np.zeros_like(x) for x in init]
    v = [np.zeros_like(x) for x in init]
    beta1_power, beta2_power = beta1, beta2
    for g_step in grads:
        alpha = lr * np.sqrt(one - beta2_power) / (one - beta1_power)
        for i, g in enumerate(g_step):
            m[i] += (g - m[i]) * (one - beta1)
            v[i] += (np.square(g) - v[i]) * (one - beta2)
            var[i] -= (m[i] * alpha) / (np.sqrt(v[i]) + epsilon)
        beta1_power, beta2_power = beta1_power * beta1, beta2_power * beta2
    return var, m, v


def _run_ours(init, grads, opt=None):
    params = [torch.tensor(x, requires_grad=True) for x in init]
    opt = opt or Adam(params, lr=0.002)
    for g_step in grads:
        for p, g in zip(params, g_step):
            p.grad = torch.tensor(g)
        opt.step()
    return params, opt


def test_adam_computes_what_tf_apply_adam_computes():
    init = [(np.random.RandomState(1).randn(*s)).astype(F32) for s in SHAPES]
    grads = _grads(5)
    ref_var, ref_m, ref_v = tf_adam(init, grads)
    params, opt = _run_ours(init, grads)
    for i in range(len(SHAPES)):
        moved_ref, moved = ref_var[i] - init[i], params[i].detach().numpy() - init[i]
        assert np.allclose(moved, moved_ref, rtol=1e-4, atol=1e-9), (SCALES[i], np.abs(moved - moved_ref).max())
        assert np.allclose(opt.m[i].numpy(), ref_m[i], rtol=1e-6, atol=0)
        assert np.allclose(opt.v[i].numpy(), ref_v[i], rtol=1e-6, atol=0)


def test_a_variable_without_gradient_is_left_alone_and_the_count_still_advances():
    init = [np.ones(s, F32) for s in SHAPES]
    grads = _grads(2)
    params, opt = _run_ours(init, grads)
    before = [p.detach().clone() for p in params] + [t.clone() for t in opt.m + opt.v]
    params[0].grad, params[1].grad, params[2].grad = torch.ones(SHAPES[0]), None, torch.ones(SHAPES[2])
    opt.step()
    assert torch.equal(params[1], before[1]) and torch.equal(opt.m[1], before[4]) and torch.equal(opt.v[1], before[7])
    assert not torch.equal(params[0], before[0])
    assert opt.steps == 3 and opt.beta1_power == F32(0.9) * F32(0.9) * F32(0.9) * F32(0.9)


def test_state_dict_resumes_exactly():
    init = [np.ones(s, F32) for s in SHAPES]
    grads = _grads(5)
    whole, _ = _run_ours(init, grads)
    first, opt = _run_ours(init, grads[:3])
    state = opt.state_dict()
    params = [torch.tensor(p.detach().numpy(), requires_grad=True) for p in first]
    resumed = Adam(params, lr=0.002)
    resumed.load_state_dict(state)
    for g_step in grads[3:]:
        for p, g in zip(params, g_step):
            p.grad = torch.tensor(g)
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(params, whole))


def test_a_torch_optim_adam_checkpoint_loads_as_the_same_moments_and_count():
    """Checkpoints written before optim.py held torch.optim.Adam's state: an interrupted cell
    of such a run resumes with the same two moments, step count and beta powers."""
    init = [np.ones(s, F32) for s in SHAPES]
    grads = _grads(3)
    torch_params = [torch.tensor(x, requires_grad=True) for x in init]
    torch_opt = torch.optim.Adam(torch_params, lr=0.002)
    for g_step in grads:
        for p, g in zip(torch_params, g_step):
            p.grad = torch.tensor(g)
        torch_opt.step()
    ours_after_3 = _run_ours(init, grads)[1]
    loaded = Adam([torch.zeros(s, requires_grad=True) for s in SHAPES], lr=0.002)
    loaded.load_state_dict(torch_opt.state_dict())
    assert loaded.steps == 3 and (loaded.beta1_power, loaded.beta2_power) == \
        (ours_after_3.beta1_power, ours_after_3.beta2_power)
    for a, b in zip(loaded.m + loaded.v, ours_after_3.m + ours_after_3.v):   # torch's 1 - beta is a double,
        assert torch.allclose(a, b, rtol=1e-4, atol=0)                         # TF's a float32 (5e-5 apart)


def test_a_training_process_imports_no_dynamo():
    """torch.optim's first call imports all of torch._dynamo (~2 s of CPU per worker process);
    a run that does not compile must not pay it."""
    code = ("import sys, tempfile\n"
            "from mixmatch_core.config import resolve\n"
            "from mixmatch_core.train import train\n"
            "d = tempfile.mkdtemp()\n"
            "r = train(resolve(dict(dataset='digits', n_labeled=50, steps=2, eval_every=2, batch_size=8, "
            "progress=False, device='cpu', out_dir=d)))\n"
            "assert r.status == 'FINISHED', r.status\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_state_for_another_model_is_refused():
    state = Adam([torch.zeros(2, requires_grad=True)], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="optimiser state holds 1 parameters, the model 2"):
        Adam([torch.zeros(2, requires_grad=True)] * 2, lr=0.1).load_state_dict(state)
