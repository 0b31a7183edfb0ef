"""filterd on the secured broker with exactly the ACLs ``filterd topics acls`` generates.

For each delivery mode: with the full set it routes every event; with any one ACL of the set
revoked it stops in one line naming that ACL, exit 1. Together these show the set is both
sufficient and minimal.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from filterd.acls import Acl, apply_acls, required_acls
from filterd.config import Config, load_config
from filterd.topics import create_topics, delete
from tests.support.kafka import drain

from .conftest import REPO, SecureBroker, one_consent_snapshot

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SENDER, CONSENTED, STRANGER = "106900001234", "13800001111", "13800002222"
EVENTS = [
    ({"id": "c", "sender": SENDER, "recipient": CONSENTED}, ("deliver", "consent")),
    ({"id": "n", "sender": SENDER, "recipient": STRANGER}, ("block", "no-consent")),
    ({"id": "u", "sender": "other", "recipient": CONSENTED}, ("block", "unknown-sender")),
    ({"id": "b", "sender": SENDER, "recipient": "12"}, ("invalid", "bad-recipient")),
]
RUN_TIMEOUT_S = 60.0


def _config(broker: SecureBroker, user: str, suffix: str, mode: str, snapshots: Path) -> Path:
    path = snapshots.parent / f"{user}.toml"
    path.write_text(
        broker.config(user).read_text()
        + f'group_id = "g-{suffix}"\n\n[topics]\n'
        + "".join(
            f'{key} = "{key}-{suffix}"\n'
            for key in ("input", "deliver", "block", "invalid", "changes")
        )
        # MO replies off: their grants (WRITE on changes) are used only once a reply comes.
        + 'inbound = ""\n'
        + f'\n[snapshot]\nroot = "{snapshots}"\n\n[metrics]\nenabled = false\n'
        + f'\n[delivery]\nmode = "{mode}"\n\n[service]\nstartup_timeout_s = 20\n'
    )
    return path


async def _seed(admin: Config) -> None:
    await create_topics(admin, 2)
    producer = AIOKafkaProducer(**admin.kafka.client_options())
    await producer.start()
    try:
        for event, _ in EVENTS:
            await producer.send_and_wait(admin.topics.input, orjson.dumps(event))
    finally:
        await producer.stop()


def _start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "filterd", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip


def _filterd_errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line and "filterd." in line]


async def _routes(admin: Config) -> dict[str, tuple[str, str]]:
    routed: dict[str, tuple[str, str]] = {}
    for topic in (admin.topics.deliver, admin.topics.block, admin.topics.invalid):
        for record in await drain(
            "", topic, timeout=2, client_options=admin.kafka.client_options()
        ):
            headers = dict(record.headers)
            event_id = orjson.loads(record.value)["id"]
            routed[event_id] = (
                headers["filterd-route"].decode(),
                headers["filterd-reason"].decode(),
            )
    return routed


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
async def test_exactly_the_generated_acls(
    secure_kafka: SecureBroker, tmp_path: Path, mode: str
) -> None:
    suffix = uuid.uuid4().hex[:10]
    snapshots = one_consent_snapshot(tmp_path, SENDER, CONSENTED)
    admin = load_config(_config(secure_kafka, "admin", suffix, mode, snapshots))
    service_path = _config(secure_kafka, "filterd", suffix, mode, snapshots)
    service = load_config(service_path)
    acls = required_acls(service, "User:filterd")
    await _seed(admin)
    await apply_acls(admin, acls)
    auditor_path = _config(secure_kafka, "auditor", suffix, mode, snapshots)
    auditor_acls = required_acls(load_config(auditor_path), "User:auditor", "auditor")
    try:
        await _revoke_each_then_run_all(admin, service_path, acls, mode)
        # The audit commands, as a read-only auditor.
        await apply_acls(admin, auditor_acls)
        audit = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "filterd", "audit", "summary", "--config", str(auditor_path),
             "--invalid", "--format", "json", "--no-progress"],
            capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        )  # fmt: skip
        assert audit.returncode == 0, audit.stderr
        summary = orjson.loads(audit.stdout)
        # At-least-once: the run refused its changelog WRITE may have written a batch that
        # the full run wrote again (see _revoke_each_then_run_all), so once or twice.
        allowed = {1} if mode == "exactly-once" else {1, 2}
        by_reason = summary["by_reason"]
        assert set(by_reason) == {"no-consent", "unknown-sender", "bad-recipient"}, summary
        assert all(n in allowed for n in by_reason.values()), summary
    finally:
        await apply_acls(admin, acls + auditor_acls, revoke=True)
        t = admin.topics
        topics = [t.input, t.deliver, t.block, t.invalid, t.changes]
        await delete(admin.kafka.client_options(), topics)


async def _revoke_each_then_run_all(
    admin: Config, service_path: Path, acls: list[Acl], mode: str
) -> None:

    # Each ACL revoked in turn: one line naming it, exit 1, nothing routed.
    for acl in acls:
        await apply_acls(admin, [acl], revoke=True)
        proc = _start(service_path)
        try:
            output, _ = await asyncio.to_thread(proc.communicate, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            await apply_acls(admin, [acl])
            raise AssertionError(f"filterd ran on without {acl}:\n{output[-4000:]}") from None
        await apply_acls(admin, [acl])
        assert proc.returncode == 1, (acl, output)
        errors = _filterd_errors(output)
        assert len(errors) == 1, (acl, output)
        assert errors[0].endswith(
            f"not authorized: missing ACL '{acl}' "
            "(filterd topics acls --principal User:filterd prints them all)"
        ), (acl, output)
        assert "Traceback" not in output
    expected = {event["id"]: outcome for event, outcome in EVENTS}
    routed = await _routes(admin)
    if mode == "exactly-once":
        # Refused inside the transaction: nothing reaches a read_committed reader.
        assert routed == {}
    else:
        # At-least-once: a batch's outputs and its counters' changelog records are sent
        # together, so a missing WRITE on the changelog is learnt once the outputs are
        # written. Their offsets are not committed (the next run writes them again, as
        # at-least-once allows); what was written is decided right.
        assert all(expected[mid] == outcome for mid, outcome in routed.items()), routed

    # The whole set: every event routed as the contract says.
    proc = _start(service_path)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    routed: dict[str, tuple[str, str]] = {}
    try:
        while routed != expected and time.monotonic() < deadline and proc.poll() is None:
            await asyncio.sleep(1)
            routed = await _routes(admin)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=RUN_TIMEOUT_S)
    assert routed == expected, output
    assert proc.returncode == 0, output
    assert _filterd_errors(output) == []
