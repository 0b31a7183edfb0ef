"""Tests of live changes leave no rate-limited log line pending for a later test to flush."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from filterd.changes import feed


@pytest.fixture(autouse=True)
def _flush_bad_change_lines() -> Iterator[None]:
    yield
    feed._bad_changes.flush()
