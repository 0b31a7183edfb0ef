"""Fault injection for the fault suite: the only one, and off unless asked for.

The fault suite (``make faults``, and ``tests/integration/test_faults_quick.py``
inside pytest) and ``tests/integration/test_stream.py`` need a worker that dies
at the worst moment for a crash: its batch produced and acknowledged, its
offsets not committed yet. Nothing in the delivery path knows about it:
``filterd run`` calls :func:`install_from_env` once at start-up, and only when
``FILTERD__FAULT_KILL_AFTER_PRODUCE=N`` is set does it wrap the commit step of
both delivery modes (:meth:`filterd.delivery.AtLeastOnce._commit` and
:meth:`filterd.delivery.ExactlyOnce._commit`) so that the process exits with
137 (as after ``kill -9``) just before its N-th commit.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: Exit before the N-th commit of produced and acknowledged output.
KILL_AFTER_PRODUCE_ENV = "FILTERD__FAULT_KILL_AFTER_PRODUCE"

_Commit = Callable[..., Coroutine[Any, Any, Any]]


class _Countdown:
    __slots__ = ("remaining",)

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining

    def __call__(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            log.warning("%s: exiting between produce and commit", KILL_AFTER_PRODUCE_ENV)
            os._exit(137)


def install_from_env(env: dict[str, str] | None = None) -> bool:
    """Install the hook when the variable asks for it; return whether it did."""
    value = (os.environ if env is None else env).get(KILL_AFTER_PRODUCE_ENV, "")
    if not value.isdigit() or int(value) == 0:
        return False
    from filterd.delivery import AtLeastOnce, ExactlyOnce

    countdown = _Countdown(int(value))
    for cls in (AtLeastOnce, ExactlyOnce):
        cls._commit = _before(countdown, cls._commit)  # type: ignore[method-assign]
    log.warning("%s=%s: this process will exit before a commit", KILL_AFTER_PRODUCE_ENV, value)
    return True


def _before(hook: Callable[[], None], commit: _Commit) -> _Commit:
    @functools.wraps(commit)
    async def wrapped(*args: object, **kwargs: object) -> object:
        hook()
        return await commit(*args, **kwargs)

    return wrapped
