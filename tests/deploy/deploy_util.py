"""Helpers shared by the deployment tests: paths, tools, the product's own config and CLI.

The deployment files are checked against the product itself wherever they name
something from it: a config file or environment is loaded with
``filterd.config.load_config`` and a command line is parsed by the real
``filterd`` argument parser, so a renamed key or option fails here rather than
in an operator's rollout.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from filterd import __version__
from filterd.cli import build_parser
from filterd.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SAMPLE_CONFIG = REPO / "config" / "filterd.toml"
#: The image name and tag `make image` builds (deploy/docker/image.sh), which the Compose
#: and Kubernetes files run.
IMAGE = f"localhost/filterd:{__version__}"

METRICS_PATHS = {"/healthz", "/readyz", "/metrics"}


def tool(name: str) -> str | None:
    """Path of an executable: next to this interpreter (dev extra) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Path of an executable, or skip the test saying which tool is missing."""
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def config_from(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load a filterd config the way `filterd run` would, with only ``env`` as environment."""
    return load_config(path, env=dict(env or {}))


def parse_cli(argv: Sequence[str]) -> None:
    """Fail the test unless the real ``filterd`` parser accepts ``argv`` (without running it)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(list(argv))
        except SystemExit as exc:
            pytest.fail(f"filterd rejects {' '.join(argv)!r}: {err.getvalue().strip()} ({exc})")
    if getattr(args, "func", None) is None:
        pytest.fail(f"filterd {' '.join(argv)!r} names no command")


_DURATION = re.compile(r"^\s*(?:(\d+)\s*min)?\s*(?:(\d+)\s*s)?\s*$")


def seconds(value: str | int | float) -> float:
    """A duration as Compose or systemd write it (``45s``, ``1min 30s``, ``45``) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if text.isdigit():
        return float(text)
    match = _DURATION.match(text)
    if match is None or not any(match.groups()):
        raise ValueError(f"not a duration: {value!r}")
    minutes, secs = (int(g) if g else 0 for g in match.groups())
    return minutes * 60.0 + secs
