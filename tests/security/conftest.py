"""The secured local broker (``deploy/local/kafka.sh up-secure``) for the security tests.

It is started once per session by the first test that asks for ``secure_kafka`` and left
running, like the plain broker; ``make kafka-down-secure`` (and CI's clean-up) stops it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
STATE = Path.home() / ".cache" / "filterd" / "broker-secure"
START_TIMEOUT_S = 600  # a first-ever start may download the jars


@dataclass(frozen=True)
class SecureBroker:
    """Where the secured broker listens and the config files ``up-secure`` wrote for it."""

    bootstrap: str
    state: Path

    def config(self, user: str) -> Path:
        """The ``[kafka]`` section for ``user`` (admin, filterd or auditor)."""
        return self.state / f"{user}.toml"

    @property
    def cafile(self) -> Path:
        return self.state / "tls" / "ca.pem"


def one_consent_snapshot(tmp_path: Path, sender: str, recipient: str) -> Path:
    """A snapshot root whose only consent is (``sender``, ``recipient``)."""
    from filterd.snapshot import build_snapshot

    consents = tmp_path / "consents.csv"
    consents.write_text(f"sender,recipient\n{sender},{recipient}\n")
    root = tmp_path / "snapshots"
    build_snapshot(root, consents)
    return root


@pytest.fixture(scope="session")
def secure_kafka() -> SecureBroker:
    proc = subprocess.run(
        [str(KAFKA_SH), "up-secure"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{KAFKA_SH} up-secure failed ({proc.returncode}):\n{proc.stderr}", False)
    return SecureBroker(bootstrap="127.0.0.1:9093", state=STATE)
