"""The alert rules, checked and unit-tested by Prometheus's own promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install prometheus; .ci/run installs it)",
)


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", (RULES_DIR / "alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (RULES_DIR / "alerts_test.yml").read_text()))
    assert alerts, "no alerts found"
    assert alerts == tested


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # The lag alert no longer notices this growth.
        (
            "sum by (job, topic) (filterd_consumer_lag_records) > 1000",
            "sum by (job, topic) (filterd_consumer_lag_records) > 100000",
        ),
        # The block anomaly alert now also fires on a 3/s rise from nothing.
        ('{route="block"}[1h] offset 5m)), 5)', '{route="block"}[1h] offset 5m)), 1)'),
        # The sender jump alert now fires on a newcomer under the floor (D, 100 blocks).
        (
            "(filterd_frequency_cap_top_sender_blocks) >= 300",
            "(filterd_frequency_cap_top_sender_blocks) >= 50",
        ),
        # ... and misses a sender new in the top senders (C: no series an hour before).
        (
            "\n                or\n"
            "              sum by (job, sender) (filterd_frequency_cap_top_sender_blocks) * 0",
            "",
        ),
    ],
)
def test_unit_tests_catch_a_changed_threshold(tmp_path: Path, old: str, new: str) -> None:
    rules = (RULES_DIR / "alerts.yml").read_text()
    assert old in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(old, new))
    shutil.copy(RULES_DIR / "alerts_test.yml", tmp_path)
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
