"""``filterd run --workers N``: N stream processes under one supervisor.

Each worker is a full ``filterd run`` process in the same consumer group, so
Kafka spreads the input partitions over them and a multi-core host is used
without threads sharing a GIL. The supervisor forwards SIGTERM/SIGINT,
restarts a worker that dies (with a growing back-off, so a worker that cannot
start does not spin; a worker that ran healthily for :data:`HEALTHY_AFTER_S`
before dying starts the back-off over), and exits once every worker has stopped.

Worker ``i`` serves its metrics and probes on ``[metrics] port + i``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "FILTERD__WORKER_INDEX"
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: A worker that ran this long before it died was healthy: its next restart
#: waits :data:`FIRST_BACKOFF_S` again, not the back-off of an old crash loop.
HEALTHY_AFTER_S = 60.0


class Supervisor:
    """Starts, watches and stops ``workers`` copies of ``filterd run``."""

    def __init__(
        self,
        argv: Sequence[str],
        workers: int,
        *,
        poll_s: float = 0.2,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self.argv = list(argv)
        self.workers = workers
        self.poll_s = poll_s
        self.healthy_after_s = healthy_after_s
        self.stopping = False
        self.restarts = 0
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._backoff: dict[int, float] = {}
        self._restart_at: dict[int, float] = {}
        self._started_at: dict[int, float] = {}

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        for index in range(self.workers):
            self._spawn(index)
        log.info("supervisor started %d workers: pids %s", self.workers,
                 " ".join(str(p.pid) for p in self._procs.values()))  # fmt: skip
        failed = 0
        while self._procs or (self._restart_at and not self.stopping):
            now = time.monotonic()
            for index, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self._procs[index]
                if self.stopping:
                    failed += code != 0
                    continue
                delay = self.restart_delay(index, now - self._started_at[index])
                self._restart_at[index] = now + delay
                log.warning("worker %d (pid %d) exited with %d; restarting in %.1fs",
                            index, proc.pid, code, delay)  # fmt: skip
            for index, when in list(self._restart_at.items()):
                if self.stopping:
                    self._restart_at.clear()
                elif now >= when:
                    del self._restart_at[index]
                    self.restarts += 1
                    self._spawn(index)
            time.sleep(self.poll_s)
        log.info("supervisor stopped ◆ %d workers ◆ %d restarts", self.workers, self.restarts)
        return 1 if failed else 0

    def restart_delay(self, index: int, ran_for: float) -> float:
        """How long to wait before restarting worker ``index``, which ran ``ran_for`` s."""
        if ran_for >= self.healthy_after_s:
            self._backoff.pop(index, None)  # it was healthy: not a crash loop
        delay = self._backoff.get(index, FIRST_BACKOFF_S)
        self._backoff[index] = min(delay * 2, MAX_BACKOFF_S)
        return delay

    def _spawn(self, index: int) -> None:
        self._started_at[index] = time.monotonic()
        env = dict(os.environ, **{WORKER_INDEX_ENV: str(index)})
        self._procs[index] = subprocess.Popen(
            [sys.executable, "-m", "filterd", *self.argv], env=env
        )

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)


def worker_index() -> int | None:
    """This process's worker index when started by the supervisor."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value and value.isdigit() else None
