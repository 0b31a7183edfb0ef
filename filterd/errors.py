"""The errors filterd raises, with one root so callers can catch them all.

Each subclass means something to an operator: a bad config value, a refused
snapshot, a broker that cannot be reached. Foreign errors are wrapped with
``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations


class FilterdError(Exception):
    """Root of every error filterd raises on purpose."""

    #: Whether the same operation may succeed later as it is. Start-up retries a retriable
    #: error until ``service.startup_timeout_s`` and stops at once on any other: a wrong
    #: password or an untrusted certificate does not heal by waiting.
    retriable: bool = False
    #: The exit status of a command that stops with this error.
    exit_code: int = 1


class ConfigError(FilterdError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key


class InvalidNumber(FilterdError, ValueError):
    """A phone number cannot be normalized to E.164 digits."""


class SnapshotError(FilterdError):
    """A consent snapshot cannot be built, read or validated.

    A refused snapshot never replaces the one in force.
    """


class BrokerError(FilterdError):
    """Kafka could not be reached or refused an operation."""

    retriable = True
