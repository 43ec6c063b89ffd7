"""The two registries are the one place their facts live: methods declare their knobs and
variants (methods/__init__.py), datasets are one record each (datasets.py), and a variant
cannot contradict the method it is given with."""
import importlib

import pytest

from mixmatch_core import datasets
from mixmatch_core.config import FIELDS, VARIANTS, ConfigError, help_text, resolve
from mixmatch_core.methods import METHODS, knobs, method_fields, row_order, variants


def test_every_declared_hyperparameter_is_a_config_field_and_the_reverse():
    declared = method_fields()
    knob_fields = {name for name, f in FIELDS.items() if f.metadata.get("knob")}
    assert declared <= set(FIELDS), f"declared but not Config fields: {declared - set(FIELDS)}"
    assert knob_fields == declared


@pytest.mark.parametrize("method,name", [(m, k) for m, rec in METHODS.items() for k in rec.hparams])
def test_a_knob_value_its_check_refuses_is_one_line_naming_the_field(method, name):
    knob = METHODS[method].hparams[name]
    bad = "not-a-choice" if knob.choices else (-1e9 if knob.check else None)
    if bad is None:
        pytest.skip(f"{name} (a bool) has no check beyond its type")
    user = {"variant": method} if method in VARIANTS else {"method": method}
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        resolve({**user, name: bad, "dataset": "digits"})


def test_help_lists_every_knob_with_its_declared_help():
    text = help_text()
    for name in method_fields():
        assert knobs(name)[0][1].help in text, name


def test_mixmatch_ablations_are_mixmatch_variants_and_table_rows_follow_the_registry():
    assert {"k1", "no_sharpen", "no_mixup", "mixup_separate", "ema_guess"} <= set(METHODS["mixmatch"].variants)
    assert VARIANTS == variants()
    assert row_order()[0] == "mixmatch" and row_order()[-1] == "fully_supervised"
    assert row_order().index("mixup_separate") < row_order().index("pi_model")


@pytest.mark.parametrize("variant,method", [("mixmatch", "vat"), ("no_ema", "vat"), ("vat", "mixmatch"),
                                            ("fully_supervised", "supervised")])
def test_a_variant_and_a_method_that_disagree_are_one_line(variant, method):
    with pytest.raises(ConfigError, match=rf"^variant: '{variant}' is a variant of method"):
        resolve({"variant": variant, "method": method})


def test_a_variant_and_its_own_method_agree():
    assert resolve({"variant": "vat", "method": "vat"}).method == "vat"
    assert resolve({"variant": "no_sharpen", "method": "mixmatch"}).T == 1.0
    assert resolve({"method": "vat"}).variant == "vat"       # no variant: named after the method


def test_a_specs_own_variant_without_a_method_applies_to_the_given_method():
    cfg = resolve({"variant": "light", "method": "vat"}, variants={"light": {"wd": 0.01}})
    assert (cfg.method, cfg.wd) == ("vat", 0.01)


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_every_dataset_record_names_a_loader_and_its_preset_is_config_fields(name):
    info = datasets.DATASETS[name]
    module, func = info.loader.split(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert set(info.preset) <= set(FIELDS)
    assert resolve({"dataset": name, "n_labeled": 1000, "seed": 1}).dataset == name


def test_an_npz_file_named_after_a_paper_dataset_is_compared_with_it():
    assert datasets.dataset_info("npz:/x/cifar10.npz").paper_name == "cifar10"
    assert datasets.dataset_info("npz:/x/mine.npz").paper_name is None
    assert datasets.dataset_info("digits").paper_name is None
    assert datasets.dataset_info("imagenet") is None


def test_resolving_a_config_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys; from mixmatch_core.config import resolve; resolve({'dataset': 'stl10', 'n_labeled': 1000}); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_help_lists_every_field_with_its_default_in_one_column():
    lines = help_text().split("\n\n")[0].splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == list(FIELDS)
    starts = {ln.index(" " + ln.split()[1], len(ln.split()[0]) + 2) for ln in lines}
    assert len(starts) == 1, "the defaults do not line up"
    assert "((" not in help_text()
