"""Two processes on one results dir (issue #14 item 4): a run is computed once; the other
process waits for it (a ``filelock`` per run_id) and then reuses it. Two whole ``run_all``
processes on one results dir: tests/test_faults.py (its uninterrupted baseline)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# One process's unit of work: compute the run "demo/<rid>" unless it is current, slowly.
UNIT = """
import sys, time
from medstudy import locks, results
log = sys.argv[1]
config = {"what": "a slow unit"}
rid = results.run_id(config)
with locks.pending("demo", rid) as todo:
    if todo:
        with open(log, "a") as f:
            f.write("start\\n")
        time.sleep(3.0)
        with results.Run("demo", config) as run:
            run.log_metrics([{"metric": "m", "value": 1.0}])
        with open(log, "a") as f:
            f.write("end\\n")
print("computed" if todo else "reused")
"""


def _wait_for(path: Path, text: str, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} never showed {text!r}")
        time.sleep(0.05)


def test_a_unit_is_computed_once_and_the_waiting_process_reuses_it(tmp_path: Path) -> None:
    env = {**os.environ, "MEDSTUDY_RESULTS_DIR": str(tmp_path / "results")}
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-c", UNIT, str(log)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(log, "start")  # the first process holds the run's lock and is computing
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out1, err1 = (s.decode() for s in first.communicate(timeout=120))
    out2, err2 = (s.decode() for s in second.communicate(timeout=120))
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert (out1.strip(), out2.strip()) == ("computed", "reused")
    assert log.read_text() == "start\nend\n"  # computed once, never twice or interleaved
    assert "waiting for run demo/" in err2
    runs = [p for p in (tmp_path / "results" / "demo").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "DONE").exists()
