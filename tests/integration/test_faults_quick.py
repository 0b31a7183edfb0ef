"""The quick fault-injection suite, run as part of the test suite (and so in CI).

It drives ``tests/chaos/faults.py --quick``: both delivery modes, each with worker
``kill -9``s, a hard and a graceful restart of a *private* broker (its own port and
state directory, never the shared one), a rebalance storm and a corrupt-then-good
snapshot, then checks every output against the input and an independent reference
model. A few minutes of wall time; no timing is asserted, only the counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Apart from the suite's own default (19392) so that `make faults-quick` can run alongside.
PORT = os.environ.get("FAULTS_TEST_KAFKA_PORT", "19492")

SUITE_TIMEOUT_S = 1000

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(1200)
def test_quick_fault_suite_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "faults-quick.json"
    command = [sys.executable, "-m", "tests.chaos.faults", "--quick", "--port", PORT]
    command += ["--out", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the suite then stops its workers and its broker.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=90)
    tail = "\n".join(stdout.splitlines()[-80:]) + "\n" + stderr[-4000:]
    assert out.exists(), f"no report written (exit {proc.returncode}):\n{tail}"
    report = json.loads(out.read_text())
    runs = {run["mode"]: run for run in report["runs"]}
    assert set(runs) == {"exactly-once", "at-least-once"}, tail
    for mode, run in runs.items():
        summary = {k: v for k, v in run.items() if k != "details"}
        assert run["inputs"] >= report["plan"]["events"], (mode, summary)
        assert run["kills"] >= 2, (mode, summary)
        assert run["broker_restarts"] >= 1, (mode, summary)
        assert run["rebalances"] >= 2, (mode, summary)
        assert run["details"]["corrupt_snapshots_published"] == 1, (mode, summary)
        assert (run["lost"], run["misrouted"], run["in_two_topics"]) == (0, 0, 0), (
            mode,
            summary,
            run["details"]["examples"],
        )
        if mode == "exactly-once":
            assert run["duplicated"] == 0, (summary, run["details"]["examples"])
        assert run["passed"], (mode, run["details"]["problems"], tail)
    assert proc.returncode == 0, tail
