"""Run identity is stable across releases: a finished sweep stays finished after an upgrade.

The cell keys below were computed by release 0.1 (before the method registry) from the specs
as they were then; the same specs must give the same keys today. tests/test_methods.py checks
that a baseline's identity holds only its own hyperparameters."""
import pytest

from sweeps.spec import load_spec

BEFORE_THE_REGISTRY = {
    "experiments/quickstart.yaml": {
        "digits-30-s1-mixmatch": "f1c50c146a62",
        "digits-30-s2-mixmatch": "2419c3cf88e4",
        "digits-30-s1-supervised": "78de9eb504a4",
        "digits-30-s2-supervised": "e17efa079ce9",
        "digits-50-s1-mixmatch": "8995839f750b",
        "digits-50-s2-mixmatch": "29412585c1b8",
        "digits-50-s1-supervised": "bf875649c6ce",
        "digits-50-s2-supervised": "a6ddff1fd631",
        "digits-100-s1-mixmatch": "aed629aa0d1c",
        "digits-100-s2-mixmatch": "46a86ac8baea",
        "digits-100-s1-supervised": "32e73679a40e",
        "digits-100-s2-supervised": "ab2cae4fb77a",
        "digits-50-s1-no_sharpen": "911670d58d12",
        "digits-50-s2-no_sharpen": "a076f1899e34",
        "digits-50-s1-no_mixup": "76c645772d4e",
        "digits-50-s2-no_mixup": "43bd7b95bc0b",
        "digits-50-s1-k1": "f8009cdc8d96",
        "digits-50-s2-k1": "4501cd8f5c25",
        "digits-50-s1-no_ema": "ce676861d94b",
        "digits-50-s2-no_ema": "5af766a2f8e9",
    },
    "experiments/cpu_cifar10.yaml": {
        "npz_cifar10-250-s1-mixmatch": "1ed91aa5c3a6",
        "npz_cifar10-250-s2-mixmatch": "b406fe66d815",
        "npz_cifar10-250-s1-supervised": "71fd955b30a8",
        "npz_cifar10-250-s2-supervised": "400aaada1ed5",
        "npz_cifar10-1000-s1-mixmatch": "979e175fb1df",
        "npz_cifar10-1000-s2-mixmatch": "f1351bccde54",
        "npz_cifar10-1000-s1-supervised": "24a907998af8",
        "npz_cifar10-1000-s2-supervised": "b456b0ba5789",
        "npz_cifar10-4000-s1-mixmatch": "510ce51bd0e1",
        "npz_cifar10-4000-s2-mixmatch": "dcc1e2d82a0d",
        "npz_cifar10-4000-s1-supervised": "98606aaa45fc",
        "npz_cifar10-4000-s2-supervised": "facd11648e95",
        "npz_cifar10-250-s1-no_sharpen": "1e40c63c7f98",
        "npz_cifar10-250-s2-no_sharpen": "bdf8854cb8d1",
        "npz_cifar10-250-s1-no_mixup": "7ce3f716ea67",
        "npz_cifar10-250-s2-no_mixup": "666d6dd0d6b4",
        "npz_cifar10-250-s1-k1": "5057bab135ba",
        "npz_cifar10-250-s2-k1": "36d1668d9b7c",
        "npz_cifar10-250-s1-no_ema": "bf78f8e9cdf4",
        "npz_cifar10-250-s2-no_ema": "3da0db0364ea",
    },
    "experiments/cpu_cifar10_long.yaml": {
        "npz_cifar10-1000-s1-mixmatch": "7e5afb130257",
        "npz_cifar10-1000-s2-mixmatch": "b349d7da7c88",
        "npz_cifar10-1000-s1-supervised": "467cde15df08",
        "npz_cifar10-1000-s2-supervised": "f1fb442f0bfe",
        "npz_cifar10-4000-s1-mixmatch": "a8462b73ebaa",
        "npz_cifar10-4000-s2-mixmatch": "578cdf3cce52",
        "npz_cifar10-4000-s1-supervised": "689edb0e56eb",
        "npz_cifar10-4000-s2-supervised": "1d3199522745",
    },
}


@pytest.mark.parametrize("spec", sorted(BEFORE_THE_REGISTRY))
def test_specs_made_before_the_method_registry_keep_their_cell_keys(spec):
    now = {c.run_name: c.cell_key for c in load_spec(spec).cells()}
    assert now == BEFORE_THE_REGISTRY[spec]


# experiments/paper_cifar10.yaml was MixMatch's 25 Table 5 cells; it is now the whole 150-cell
# comparison, and its MixMatch cells keep their keys.
PAPER_CIFAR10_MIXMATCH = {
    "cifar10-250-s1-mixmatch": "8008cc43eecc",
    "cifar10-250-s2-mixmatch": "179e07ba06ba",
    "cifar10-250-s3-mixmatch": "67bf231b6829",
    "cifar10-250-s4-mixmatch": "fced37091378",
    "cifar10-250-s5-mixmatch": "e1f178e9e23b",
    "cifar10-500-s1-mixmatch": "ee08aa7c8d73",
    "cifar10-500-s2-mixmatch": "93bccfd1b3a2",
    "cifar10-500-s3-mixmatch": "281fbc3643e5",
    "cifar10-500-s4-mixmatch": "af444e47017c",
    "cifar10-500-s5-mixmatch": "25a5a8a7299c",
    "cifar10-1000-s1-mixmatch": "1de1a72cec69",
    "cifar10-1000-s2-mixmatch": "93370366bf5d",
    "cifar10-1000-s3-mixmatch": "da7c1d9a5886",
    "cifar10-1000-s4-mixmatch": "a5d0f0610a22",
    "cifar10-1000-s5-mixmatch": "1481681402b4",
    "cifar10-2000-s1-mixmatch": "dcb48172701d",
    "cifar10-2000-s2-mixmatch": "86bfd59329d2",
    "cifar10-2000-s3-mixmatch": "444a55065e90",
    "cifar10-2000-s4-mixmatch": "81bf31ea4e45",
    "cifar10-2000-s5-mixmatch": "5c287e45af4d",
    "cifar10-4000-s1-mixmatch": "d750c962be2a",
    "cifar10-4000-s2-mixmatch": "971eab17a715",
    "cifar10-4000-s3-mixmatch": "5be423902c9c",
    "cifar10-4000-s4-mixmatch": "32168021b655",
    "cifar10-4000-s5-mixmatch": "abb1198edc9b",
}


def test_the_paper_cifar10_spec_keeps_its_mixmatch_cells_now_that_it_has_every_method():
    cells = load_spec("experiments/paper_cifar10.yaml").cells()
    assert len(cells) == 150
    assert {c.run_name: c.cell_key for c in cells if c.variant == "mixmatch"} == PAPER_CIFAR10_MIXMATCH
