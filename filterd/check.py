"""``filterd check --config F``: exit 0 if the service is ready, 1 if not.

For scripts, init systems and container health checks that cannot speak
HTTP themselves: it asks ``/readyz`` on the address the config gives
(``[metrics] host``/``port``, ``FILTERD_METRICS_*`` overrides included) and
prints the JSON answer, one line per worker.
"""

from __future__ import annotations

import argparse
from typing import Any

from filterd.config import load_config
from filterd.errors import ConfigError
from filterd.http import check, worker_port


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check",
        help="exit 0 if filterd is ready (GET /readyz), 1 if not",
        description="Ask a running filterd's /readyz and exit 0 if it is ready, 1 if not. "
        "Prints the JSON answer (with the reasons when not ready), one line per worker.",
    )
    parser.add_argument("--config", metavar="F", help="the service's config file (TOML)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="check N workers, on [metrics] port .. port+N-1 (as `filterd run --workers N`)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds per request (default 5)"
    )
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Check every worker; 0 only if all of them are ready."""
    config = load_config(args.config)
    if not config.metrics.enabled:
        raise ConfigError("metrics.enabled", "the HTTP endpoint is disabled; nothing to check")
    if args.workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {args.workers}")
    worst = 0
    for index in range(args.workers):
        port = worker_port(config.metrics.port, index)
        worst = max(worst, check(config.metrics.host, port, args.timeout))
    return worst
