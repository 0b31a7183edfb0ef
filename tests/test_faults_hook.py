"""filterd/faults.py: off unless asked for; when asked, exits before the N-th commit."""

from __future__ import annotations

import subprocess
import sys

from filterd import delivery, faults

# Runs in a child (the hook ends the process): commits through AtLeastOnce._commit
# with a stand-in consumer, printing each commit that got through.
_CHILD = """
import asyncio, os
from filterd import delivery, faults

class Consumer:
    async def commit(self, offsets):
        print("committed", offsets, flush=True)

installed = faults.install_from_env()
print("installed", installed, flush=True)
target = delivery.AtLeastOnce.__new__(delivery.AtLeastOnce)
target._consumer = Consumer()

async def main():
    for n in range(1, 4):
        await target._commit({"tp": n})

asyncio.run(main())
print("survived", flush=True)
"""


def _child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=False
    )


def test_nothing_is_wrapped_unless_asked_for() -> None:
    commit = delivery.AtLeastOnce._commit
    assert faults.install_from_env({}) is False
    assert faults.install_from_env({faults.KILL_AFTER_PRODUCE_ENV: "0"}) is False
    assert faults.install_from_env({faults.KILL_AFTER_PRODUCE_ENV: "soon"}) is False
    assert delivery.AtLeastOnce._commit is commit
    result = _child({})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "installed False",
        "committed {'tp': 1}",
        "committed {'tp': 2}",
        "committed {'tp': 3}",
        "survived",
    ]


def test_the_process_exits_137_just_before_the_nth_commit() -> None:
    result = _child({faults.KILL_AFTER_PRODUCE_ENV: "2"})
    assert result.returncode == 137, result.stderr
    assert result.stdout.splitlines() == ["installed True", "committed {'tp': 1}"]
