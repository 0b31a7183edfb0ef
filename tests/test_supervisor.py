"""The supervisor's restart back-off: grows in a crash loop, starts over after a healthy run."""

from __future__ import annotations

from filterd.supervisor import FIRST_BACKOFF_S, MAX_BACKOFF_S, Supervisor


def test_backoff_doubles_while_a_worker_keeps_dying_early() -> None:
    sup = Supervisor(["run"], 2, healthy_after_s=60.0)
    delays = [sup.restart_delay(0, ran_for=1.0) for _ in range(9)]
    assert delays[:4] == [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S, 4 * FIRST_BACKOFF_S,
                          8 * FIRST_BACKOFF_S]  # fmt: skip
    assert max(delays) == MAX_BACKOFF_S
    # Each worker has its own back-off.
    assert sup.restart_delay(1, ran_for=1.0) == FIRST_BACKOFF_S


def test_backoff_starts_over_after_a_healthy_run() -> None:
    sup = Supervisor(["run"], 1, healthy_after_s=60.0)
    for _ in range(8):
        sup.restart_delay(0, ran_for=1.0)
    assert sup.restart_delay(0, ran_for=1.0) == MAX_BACKOFF_S
    # Then it ran for an hour before dying: a new failure, not the old crash loop.
    assert sup.restart_delay(0, ran_for=3600.0) == FIRST_BACKOFF_S
    assert sup.restart_delay(0, ran_for=1.0) == 2 * FIRST_BACKOFF_S
