"""A sweep's fixed costs: what the launcher imports, and how soon it and its workers notice the end.

Nothing here changes a result; these are the seconds every `mixmatch sweep` (and every test that
starts one) pays before its first cell trains and after its last one finished.
"""

import subprocess
import sys
import time
from types import SimpleNamespace

from sweeps import runner
from sweeps.store import open_storage
from sweeps.worker import idle_poll_seconds


def test_the_launcher_imports_neither_torch_nor_the_reports_plotting():
    # torch (for the out_dir check) and matplotlib, pandas' tables and scipy (for the closing
    # report, which --no-table skips) cost about 3.5 s of a launch on 2 cores.
    code = ("import sys; import sweeps.runner, mixmatch_cli.sweep; "
            "bad = {'torch', 'matplotlib', 'scipy', 'sklearn'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_progress_wait_returns_once_every_worker_has_exited():
    procs = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    t0 = time.monotonic()
    runner._wait_for_exit(procs, seconds=30)
    assert time.monotonic() - t0 < 15 and all(p.returncode == 0 for p in procs)


def test_the_progress_wait_still_waits_while_a_worker_runs():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        runner._wait_for_exit([p], seconds=0.3)
        assert 0.25 < time.monotonic() - t0 < 10 and p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_idle_workers_poll_a_local_sqlite_queue_more_often_than_a_shared_server(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/q.db")
    assert idle_poll_seconds(storage) == 0.5
    assert idle_poll_seconds(SimpleNamespace(engine=SimpleNamespace(name="postgresql"))) == 2.0


def test_a_mixmatch_process_exits_with_mains_code_and_skips_the_final_collections():
    # Every worker process ends here: the interpreter's final garbage collections over torch's,
    # dynamo's and MLflow's objects took 1.6 s of its exit; frozen objects are skipped.
    code = ("import atexit, gc, sys; atexit.register(lambda: print('gen0', gc.get_threshold()[0], "
            "'frozen', gc.get_freeze_count() > 0)); "
            "sys.argv = ['mixmatch', *sys.argv[1:]]; from mixmatch_cli import run; run()")
    ok = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    bad = subprocess.run([sys.executable, "-c", code, "no-such-command"], capture_output=True, text=True)
    assert (ok.returncode, bad.returncode) == (0, 2)
    # the youngest generation collected every 10,000 allocations: fewer passes over the imports
    assert ok.stdout.endswith("gen0 10000 frozen True\n") and "unknown command" in bad.stderr
