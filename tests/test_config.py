"""Config: presets, variants, identity and one-line validation errors."""

import pytest

from mixmatch_core.methods import METHODS, MIXMATCH_FIELDS
from mixmatch_core.config import VARIANTS, Config, ConfigError, load_config, parse_overrides, resolve


def test_defaults_are_the_papers_cifar10_setting():
    c = resolve({})
    assert (c.dataset, c.K, c.T, c.alpha, c.lambda_u, c.batch_size) == ("cifar10", 2, 0.5, 0.75, 75.0, 64)
    assert (c.lr, c.wd, c.ema_decay, c.rampup_steps, c.steps) == (0.002, 0.02, 0.999, 16384, 1 << 20)
    assert (c.eval_every, c.median_of, c.mixup, c.bn_mode) == (1024, 20, "all", "interleave")


@pytest.mark.parametrize("dataset,lambda_u,alpha", [("cifar100", 150.0, 0.75), ("svhn", 250.0, 0.75),
                                                     ("svhn_extra", 250.0, 0.25), ("stl10", 50.0, 0.75)])
def test_dataset_preset_fills_unset_fields(dataset, lambda_u, alpha):
    n = 10000 if dataset == "cifar100" else 1000
    c = resolve({"dataset": dataset, "n_labeled": n})
    assert (c.lambda_u, c.alpha) == (lambda_u, alpha)


def test_explicit_value_beats_preset():
    assert resolve({"dataset": "svhn", "lambda_u": 10}).lambda_u == 10.0


def test_digits_preset_is_a_small_cpu_setting():
    c = resolve({"dataset": "digits"})
    assert c.model.startswith("small_cnn") and c.steps <= 5000 and c.n_labeled == 50


ABLATIONS = sorted(n for n, d in VARIANTS.items() if d.get("method", "supervised") == "supervised")


@pytest.mark.parametrize("name", ABLATIONS)
def test_each_ablation_is_a_diff_against_the_full_method(name):
    c = resolve({"variant": name})
    full = resolve({})
    changed = {k for k, v in c.to_dict().items() if v != full.to_dict()[k]} - {"variant"}
    assert changed == set(VARIANTS[name])


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - set(ABLATIONS)))
def test_a_method_variant_changes_only_the_method_and_its_own_fields(name):
    c = resolve({"variant": name})
    full = resolve({})
    changed = {k for k, v in c.to_dict().items() if v != full.to_dict()[k]} - {"variant"}
    m = METHODS[c.method]
    assert "method" in changed
    # MixMatch's knobs are unset (None), the method's own and its table5.sh preset are set.
    assert changed <= {"method", *MIXMATCH_FIELDS, *m.hparams, *m.preset}


def test_user_value_contradicting_the_variant_is_an_error():
    with pytest.raises(ConfigError, match="variant 'k1' sets K=1"):
        resolve({"variant": "k1", "K": 3})


def test_cell_key_ignores_runtime_fields_and_tracks_identity():
    a = resolve({"seed": 2})
    assert a.cell_key == resolve({"seed": 2, "device": "cpu", "out_dir": "elsewhere", "compile": True}).cell_key
    assert a.cell_key != resolve({"seed": 3}).cell_key
    assert len(a.cell_key) == 12


def test_run_name_reads_as_the_config():
    assert resolve({"seed": 1, "variant": "no_sharpen"}).run_name == "cifar10-250-s1-no_sharpen"
    assert resolve({"dataset": "npz:/x/cifar10.npz", "n_labeled": 40}).run_name.startswith("npz_cifar10-40-s1")


def test_overrides_are_type_checked():
    assert parse_overrides(["K=3", "T=0.25", "ema=false", "model=small_cnn"]) == \
        {"K": 3, "T": 0.25, "ema": False, "model": "small_cnn"}


@pytest.mark.parametrize("user,field", [
    ({"K": 0}, "K"), ({"T": 0}, "T"), ({"alpha": -1}, "alpha"), ({"n_labeled": 255}, "n_labeled"),
    ({"n_labeled": 0}, "n_labeled"), ({"steps": 100, "eval_every": 200}, "eval_every"),
    ({"mixup": "both"}, "mixup"), ({"bn_mode": "x"}, "bn_mode"), ({"method": "fixmatch"}, "method"),
    ({"variant": "nope"}, "variant"), ({"dataset": "imagenet"}, "dataset"), ({"device": "tpu"}, "device"),
    ({"amp": "fp16"}, "amp"), ({"model": "resnet50"}, "model"), ({"K": "two"}, "K"), ({"ema": "maybe"}, "ema"),
    ({"colour": 1}, "colour"), ({"ema_decay": 1.0}, "ema_decay"), ({"model": "wrn27_2"}, "model"),
])
def test_bad_values_give_one_line_naming_the_field(user, field):
    with pytest.raises(ConfigError) as e:
        resolve(user)
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset: digits\nK: 3\nT: 0.4\n")
    c = load_config(str(p), ["K=4"])
    assert (c.dataset, c.K, c.T) == ("digits", 4, 0.4)


@pytest.mark.parametrize("text,match", [("K: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping"),
                                        ("!!python/object:os.system {}\n", "not valid YAML")])
def test_bad_yaml_files_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(str(p))


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config("does-not-exist.yaml")


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().K = 3  # type: ignore[misc]


@pytest.mark.parametrize("errors,median_of,expected", [([30.0, 20.0, 10.0], 1, 10.0), ([30.0, 20.0, 10.0, 14.0], 3, 14.0),
                                                       ([5.0, 9.0], 20, 7.0)])
def test_reported_error_is_the_median_of_the_last_evaluations(errors, median_of, expected):
    from mixmatch_core.run_report import report_errors
    r = report_errors(errors, median_of)
    assert r == {"error": expected, "error_last": errors[-1], "error_best": min(errors)}
