"""Running ``filterd audit ...`` in-process from async tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from filterd.cli import main


def write_config(path: Path, bootstrap: str, **topics: str) -> Path:
    lines = ["[kafka]", f'bootstrap_servers = "{bootstrap}"', "[topics]"]
    lines += [f'{name} = "{topic}"' for name, topic in topics.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_cli(*args: str) -> int:
    # The commands call asyncio.run themselves: give them a thread with no loop.
    return await asyncio.to_thread(main, list(args))
