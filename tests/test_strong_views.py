"""The trainer's strong views: CTAugment learns from its probe as cta/lib/train.py does (the
EMA model in inference mode scores the probe, before the step), its rates are checkpointed so a
killed run resumes bit-identically, what it learned is logged at each evaluation, and its
settings are checked like every field. FixMatch on digits is the method under test."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch

from mixmatch_core.config import ConfigError, resolve
from mixmatch_core.checkpoint import CKPT_NAME
from mixmatch_core.train import open_session, train

train_mod = sys.modules["mixmatch_core.train"]   # the module (the package re-exports the function `train`)

TINY = dict(dataset="digits", n_labeled=50, progress=False, device="cpu", num_threads=1, variant="fixmatch",
            uratio=2, batch_size=16, steps=12, eval_every=4, median_of=1, log_every=4)


class Stop(Exception):
    pass


def test_a_killed_run_resumes_with_the_rates_ctaugment_had_learned(tmp_path):
    full = train(resolve({**TINY, "out_dir": str(tmp_path / "a")}))
    cfg = resolve({**TINY, "out_dir": str(tmp_path / "b")})
    seen = {}

    def stop_at_8(step, h):
        if step == 8:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, on_eval=stop_at_8)
    s = open_session(cfg)                          # what the checkpoint at step 8 restores
    seen["rates"] = s.strong.cta.rates.clone()
    assert s.step == 8 and not torch.equal(seen["rates"], torch.ones_like(seen["rates"]))
    resumed = train(cfg)
    assert resumed.history == full.history and resumed.metrics == full.metrics
    end = torch.load(tmp_path / "a" / cfg.run_dir.rsplit("/", 1)[1] / CKPT_NAME, weights_only=True)
    again = torch.load(tmp_path / "b" / cfg.run_dir.rsplit("/", 1)[1] / CKPT_NAME, weights_only=True)
    assert torch.equal(end["augment"]["rates"], again["augment"]["rates"])


def test_the_probe_is_scored_by_the_ema_model_in_inference_mode(tmp_path, monkeypatch):
    s = open_session(resolve({**TINY, "out_dir": str(tmp_path)}))
    with torch.no_grad():                          # the EMA model differs from the live one
        for p in s.ema_model.parameters():
            p.mul_(0.5)
    calls = []
    real = train_mod.learn_from_probe

    def spy(strong, probe, model, ema_model, amp_ctx):
        want = torch.softmax(_eval_forward(ema_model, model, probe.x), -1)
        learned = {}
        monkeypatch.setattr(strong, "learn", lambda policy, probs, y: learned.update(probs=probs, y=y))
        real(strong, probe, model, ema_model, amp_ctx)
        calls.append((torch.allclose(learned["probs"], want, atol=1e-6), torch.equal(learned["y"], probe.y),
                      ema_model.training))
    monkeypatch.setattr(train_mod, "learn_from_probe", spy)
    train_mod.train_step(s.cfg, s.method, s.fwd, s.fwd_ema, s.data, s.amp_ctx, 1.0, s.strong)
    assert calls == [(True, True, True)]           # EMA scores, true labels, back in training mode


def test_the_probe_reads_the_ema_weights_of_before_the_step(tmp_path, monkeypatch):
    cfg = resolve({**TINY, "steps": 1, "eval_every": 1, "out_dir": str(tmp_path)})
    initial = [p.clone() for p in open_session(cfg).ema_model.parameters()]   # the run's seeded init
    (tmp_path / cfg.run_dir.rsplit("/", 1)[1] / CKPT_NAME).unlink(missing_ok=True)
    seen = []
    real = train_mod.learn_from_probe

    def spy(strong, probe, model, ema_model, amp_ctx):
        seen.append(all(torch.equal(a, b) for a, b in zip(initial, ema_model.parameters())))
        real(strong, probe, model, ema_model, amp_ctx)
    monkeypatch.setattr(train_mod, "learn_from_probe", spy)
    train(cfg)
    assert seen == [True]


def _eval_forward(ema_model, model, x):
    """The official classify_op: EMA weights, the live model's BN statistics, inference mode."""
    ref = copy.deepcopy(ema_model)
    for bd, bs in zip(ref.buffers(), model.buffers()):
        bd.copy_(bs)
    return ref.eval()(x)


def test_what_ctaugment_learned_is_logged_at_each_evaluation(tmp_path):
    logged = []

    class Tracker:
        pending: list = []

        def start(self, run_id, device):
            return "r1"

        def is_finished(self, run_id):
            return False

        def drop_logged(self):
            pass

        def log_metrics(self, metrics, step):
            pass

        def flush(self):
            return True

        def log_artifact(self, path, artifact_path=None):
            logged.append((str(path), artifact_path))

        def end(self, status, reason=None):
            pass

    train(resolve({**TINY, "out_dir": str(tmp_path)}), tracker=Tracker())
    stats = [p for p, where in logged if where == "ctaugment"]
    assert [p.rsplit("/", 1)[1] for p in stats] == [f"step-{n:08d}.txt" for n in (4, 8, 12)]
    lines = open(stats[-1]).read().splitlines()
    assert lines[0].startswith("autocontrast") and len(lines) == 19      # one line per op, sorted


@pytest.mark.parametrize("field, value, allowed", [
    ("augment", "autoaugment", "ctaugment, randaugment, none"),
    ("cta_depth", 0, ">= 1"), ("cta_threshold", 1.0, "[0, 1)"), ("cta_decay", 1.0, "(0, 1)"),
])
def test_bad_strong_augmentation_settings_are_one_line_naming_the_field(field, value, allowed):
    with pytest.raises(ConfigError, match=rf"^{field}: .*{re.escape(allowed)}"):
        resolve({"variant": "fixmatch", field: value})


def test_a_bad_augment_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mixmatch_cli", "train", "variant=fixmatch", "augment=auto",
                        f"out_dir={tmp_path / 'runs'}"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "augment" in r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


class Invert:
    """A recognisable strong augmentation: 255 - x; the probe is the image itself."""

    def __call__(self, x):
        return 255 - x

    def probe(self, x):
        return x, None


@pytest.mark.parametrize("labeled", ["weak", "strong"])
def test_the_strong_views_are_the_strong_augmentation_of_the_same_images(tmp_path, labeled):
    from mixmatch_core.views import Views
    data = open_session(resolve({**TINY, "out_dir": str(tmp_path)})).data
    torch.manual_seed(0)
    x, y, u, probe = data.draw(Views(weak=1, strong=2, uratio=2, labeled=labeled, probe=True), 8, Invert())
    assert u.weak[0].shape[0] == 16 and len(u.strong) == 2
    # to_float maps 255 - v to -(v / 127.5 - 1): an inverted image is the negated float image
    for s in u.strong:     # each strong view: the strong op on its own weak draw of the same images
        assert s.mean().item() == pytest.approx(-u.weak[0].mean().item(), abs=0.05)
    # the labeled batch: its weak draw (the probe's image), inverted only when asked for strong
    assert torch.allclose(x, -probe.x if labeled == "strong" else probe.x, atol=1e-6) and torch.equal(probe.y, y)
