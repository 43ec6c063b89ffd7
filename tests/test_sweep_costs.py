"""The dry run's cost model means what it says: a step's cost grows with what the step computes
(the batch, the dataset's image size, the method's passes, K), and a cell the queue already has
done costs nothing, in its row and in the total. Estimates, so the tests pin proportions and
orderings, not seconds.
"""
import re
from types import SimpleNamespace

import pytest

from mixmatch_core.config import resolve
from sweeps.cost import dry_run, step_seconds
from sweeps.spec import load_spec

CIFAR = dict(dataset="cifar10", model="wrn28_2")


def cost(**fields) -> float:
    return step_seconds(resolve({**CIFAR, **fields}), "cuda")


def test_a_step_costs_in_proportion_to_the_batch():
    assert cost(batch_size=128) == pytest.approx(2 * cost(batch_size=64))


def test_a_96_pixel_stl10_step_costs_9_times_a_32_pixel_step():
    assert step_seconds(resolve(dict(dataset="stl10", model="wrn28_2", scales=3)), "cuda") \
        == pytest.approx(9 * cost())


@pytest.mark.parametrize("cheaper, dearer", [(dict(method="supervised"), dict(method="mixmatch")),
                                             (dict(K=2), dict(K=3)), (dict(method="pi_model"), dict(method="vat"))],
                         ids=["supervised<mixmatch", "K2<K3", "pi_model<vat"])
def test_a_step_with_more_passes_costs_more(cheaper, dearer):
    """supervised: one labeled forward and backward; MixMatch: K guesses and K + 1 chunks; VAT:
    a power iteration (forward and backward) and an adversarial pass beyond Pi-Model's two passes."""
    assert cost(**cheaper) < cost(**dearer)


def test_a_cell_the_queue_has_done_costs_nothing_in_its_row_and_in_the_total(tmp_path, capsys):
    (tmp_path / "two.yaml").write_text("name: two\nbase: {dataset: cifar10, device: cuda}\n"
                                       "grid: {seed: [1, 2]}\n")
    spec = load_spec(str(tmp_path / "two.yaml"))
    cells = spec.cells()
    one = cells[0].steps * step_seconds(cells[0], "cuda") / 3600       # GPU-hours of one cell
    dry_run(spec, cells, "cuda", workers=1, states={cells[0].cell_key: SimpleNamespace(state="done")})
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.endswith("GPU-h")}
    assert rows[cells[0].run_name].split()[-3:] == ["done", "0.0", "GPU-h"]
    assert rows[cells[1].run_name].endswith(f"{one:,.1f} GPU-h")
    total = re.search(r"total: 2 cells \(1 done\), ~([\d.,]+) GPU-h", out)
    assert total and float(total[1].replace(",", "")) == pytest.approx(one, abs=0.05)
