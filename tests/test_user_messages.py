"""What a newcomer's mistakes are told: a misspelt key or axis gets the closest name ("did you
mean"), a config field given as an option is shown as key=value, a sweep spec given to
`mixmatch search` is named as one, and a missing file is named by what it should be. Each is
one line (ConfigError, or `mixmatch: error:` and exit 2)."""
import pytest

from mixmatch_cli import main
from mixmatch_core.config import ConfigError, parse_overrides
from sweeps.search_spec import load_search_spec
from sweeps.spec import load_spec

BASE = "base: {dataset: digits, device: cpu}\n"
SPACE = "space: {lr: {type: float, low: 0.001, high: 0.01}}\n"


def one_line_error(load, path) -> str:
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("text, says", [
    ("grd: {seed: [1]}\n", "did you mean 'grid'?"),                              # spec key
    ("grid: {n_labled: [30]}\n", "did you mean 'n_labeled'?"),                   # spec axis
    ("variants: {a: {lamda_u: 1}}\ngrid: {variant: [a]}\n", "did you mean 'lambda_u'?"),   # variant key
])
def test_a_misspelt_sweep_spec_key_or_axis_suggests_the_closest(tmp_path, text, says):
    (tmp_path / "s.yaml").write_text(BASE + text)
    assert says in one_line_error(load_spec, tmp_path / "s.yaml")


@pytest.mark.parametrize("text, says", [
    ("spcae: {lr: {type: float, low: 0.001, high: 0.01}}\n", "did you mean 'space'?"),
    ("space: {lrr: {type: float, low: 0.001, high: 0.01}}\n", "did you mean 'lr'?"),
])
def test_a_misspelt_search_spec_key_or_field_suggests_the_closest(tmp_path, text, says):
    (tmp_path / "s.yaml").write_text(BASE + text)
    assert says in one_line_error(load_search_spec, tmp_path / "s.yaml")


def test_a_misspelt_config_field_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'n_labled'.*did you mean 'n_labeled'\?"):
        parse_overrides(["n_labled=30"])


def test_a_far_off_key_gets_no_suggestion(tmp_path):
    (tmp_path / "s.yaml").write_text(BASE + "zzzzqqq: 1\ngrid: {seed: [1]}\n")
    assert "did you mean" not in one_line_error(load_spec, tmp_path / "s.yaml")


def test_a_sweep_spec_given_to_search_is_named_and_points_to_mixmatch_sweep(tmp_path):
    (tmp_path / "s.yaml").write_text(BASE + "grid: {seed: [1, 2]}\n")
    line = one_line_error(load_search_spec, tmp_path / "s.yaml")
    assert "is a sweep spec" in line and "mixmatch sweep" in line and "unknown key" not in line


def test_a_search_spec_given_to_sweep_is_named_and_points_to_mixmatch_search(tmp_path):
    (tmp_path / "s.yaml").write_text(BASE + SPACE)
    line = one_line_error(load_spec, tmp_path / "s.yaml")
    assert "is a search spec" in line and "mixmatch search" in line


@pytest.mark.parametrize("load, named", [(load_spec, "spec"), (load_search_spec, "search spec")])
def test_a_missing_spec_file_is_named_a_spec_not_a_config_file(tmp_path, load, named):
    line = one_line_error(load, tmp_path / "nope.yaml")
    assert line.startswith(f"{named} '") and "does not exist" in line and "config file" not in line


@pytest.mark.parametrize("argv, says", [
    (["--n_labeled", "30"], "did you mean n_labeled=30?"),
    (["--n_labeled=30"], "did you mean n_labeled=30?"),
    (["dataset=digits", "--steps", "5"], "did you mean steps=5?"),
])
def test_a_config_field_given_as_an_option_to_train_is_shown_as_key_value(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and err.startswith("mixmatch: error: ")
    assert "key=value" in err and says in err
