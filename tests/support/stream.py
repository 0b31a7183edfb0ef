"""A service under test with its own topics, group and snapshot root: set-up, running, reading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import ConsumerRecord

from filterd.config import Config, load_config
from filterd.service import Service
from tests.support.kafka import drain

Record = ConsumerRecord[bytes, bytes]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m filterd ARGS`` whatever its exit status (tests of refusals)."""
    return subprocess.run(
        [sys.executable, "-m", "filterd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        check=False,
    )


def cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Run ``python -m filterd ARGS``; return stdout, fail with stderr shown."""
    done = run_cli(*args, env=env, timeout=timeout)
    assert done.returncode == 0, f"filterd {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def build_snapshot(root: Path, dataset: Path, *extra: str) -> str:
    """Build a snapshot from a loadgen data set with the contract's CLI; return its version."""
    out = cli(
        "snapshot", "build",
        "--consents", str(dataset / "consents.csv.gz"),
        "--optouts", str(dataset / "optouts.csv.gz"),
        "--dnd", str(dataset / "dnd.csv.gz"),
        "--out", str(root), *extra,
    )  # fmt: skip
    return out.strip().splitlines()[-1]


@dataclass
class Stream:
    """Topics, group and snapshot root of one test's stream."""

    bootstrap: str
    input: str
    deliver: str
    block: str
    invalid: str
    group: str
    root: Path
    dataset: Path
    #: The live consent changes topic (compacted, 2 partitions).
    changes: str = ""
    #: MO replies (none unless a test creates one and sets it).
    inbound: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def create(
        cls,
        bootstrap: str,
        new_topic: Callable[..., Awaitable[str]],
        new_group: Callable[[], str],
        root: Path,
        dataset: Path,
        *,
        partitions: tuple[int, int, int, int] = (3, 3, 3, 1),
    ) -> Stream:
        """Fresh input, deliver, block and invalid topics (``partitions`` in that order)."""
        p_in, p_deliver, p_block, p_invalid = partitions
        return cls(
            bootstrap=bootstrap,
            input=await new_topic(partitions=p_in),
            deliver=await new_topic(partitions=p_deliver),
            block=await new_topic(partitions=p_block),
            invalid=await new_topic(partitions=p_invalid),
            group=new_group(),
            root=root,
            dataset=dataset,
            changes=await new_topic(
                partitions=2,
                config={"cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"},
            ),
        )

    @property
    def outputs(self) -> dict[str, str]:
        return {"deliver": self.deliver, "block": self.block, "invalid": self.invalid}

    def env(self, **overrides: str) -> dict[str, str]:
        """FILTERD_* variables configuring a service for this stream."""
        env = {
            "FILTERD_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "FILTERD_KAFKA_GROUP_ID": self.group,
            "FILTERD_TOPICS_INPUT": self.input,
            "FILTERD_TOPICS_DELIVER": self.deliver,
            "FILTERD_TOPICS_BLOCK": self.block,
            "FILTERD_TOPICS_INVALID": self.invalid,
            "FILTERD_TOPICS_CHANGES": self.changes,
            "FILTERD_TOPICS_INBOUND": self.inbound,
            "FILTERD_SNAPSHOT_ROOT": str(self.root),
            "FILTERD_SNAPSHOT_POLL_INTERVAL_S": "0.2",
            "FILTERD_METRICS_ENABLED": "false",
        }
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def config(self, **overrides: str) -> Config:
        return load_config(None, env=self.env(**overrides))

    async def outputs_by_route(
        self,
        expected: Mapping[str, int] | None = None,
        timeout: float = 60,  # noqa: ASYNC109
    ) -> dict[str, list[Record]]:
        """Every record of the three output topics (read_committed)."""
        result = {}
        for route, topic in self.outputs.items():
            want = None if expected is None else expected.get(route, 0)
            result[route] = await drain(
                self.bootstrap, topic, expected=want or None, timeout=timeout if want else 5
            )
        return result


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Service]:
    """Run a Service on this loop for the duration of the block, then stop it gracefully."""
    service = Service(config)
    task = asyncio.create_task(service.serve(install_signals=False))
    try:
        yield service
    finally:
        service.should_exit = True
        code = await asyncio.wait_for(task, 60)
        assert code == 0


def header(record: Record, name: str) -> str:
    values = [v for k, v in record.headers if k == name]
    assert len(values) == 1, (name, record.headers)
    return values[0].decode()
