"""``filterd topics create`` on the real broker: existing topics are compared, not trusted."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from filterd.config import load_config
from filterd.topics import BLOCK_RETENTION_MS, delete, differences, topic_specs

pytestmark = pytest.mark.kafka


def _create(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filterd", "topics", "create", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_existing_topics_are_compared_and_configs_applied(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    path = tmp_path / "f.toml"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n[topics]\n'
        + "".join(f'{k} = "tc-{k}-{suffix}"\n' for k in ("input", "deliver", "block", "invalid"))
        # The four stream topics (changes, inbound: tests/changes/test_topic_specs.py).
        + 'changes = ""\ninbound = ""\n'
    )
    config = load_config(path)
    names = [f"tc-{k}-{suffix}" for k in ("input", "deliver", "block", "invalid")]
    names.append(f"tc-input-{suffix}.counters")  # the step 4 counters' changelog
    try:
        first = _create(path, "--partitions", "2")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [f"{n}: created" for n in names]
        # The block topic keeps its evidence 180 days, by age only.
        assert await differences({"bootstrap_servers": kafka_bootstrap},
                                 topic_specs(config, 2, 1, BLOCK_RETENTION_MS)) == {}  # fmt: skip

        # The mistake: other settings on existing topics printed "exists" and exit 0.
        again = _create(path, "--partitions", "4", "--retention-ms", "86400000")
        assert again.returncode == 3
        lines = again.stdout.splitlines()
        assert f"{names[2]}: exists" in lines
        assert "  retention.ms: 15552000000, wanted 86400000 (run again with --apply)" in lines
        assert sum("partitions: 2, wanted 4 (not altered" in line for line in lines) == 5

        applied = _create(path, "--partitions", "4", "--retention-ms", "86400000", "--apply")
        assert applied.returncode == 3  # the partitions are left, and said so
        assert "  retention.ms: 15552000000 -> 86400000 (altered)" in applied.stdout.splitlines()
        left = await differences({"bootstrap_servers": kafka_bootstrap},
                                 topic_specs(config, 2, 1, 86_400_000))  # fmt: skip
        assert left == {}, left

        same = _create(path, "--partitions", "2", "--retention-ms", "86400000")
        assert same.returncode == 0
        assert same.stdout.splitlines() == [f"{n}: exists, as configured" for n in names]
    finally:
        await delete({"bootstrap_servers": kafka_bootstrap}, names)
