"""Everyday mistakes on the command line: one line ``filterd: error: …``, exit 1, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.snapshot import build_snapshot


def _filterd(*args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filterd", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
    )  # fmt: skip


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def snapshot_root(tmp_path: Path) -> Path:
    consents = tmp_path / "c.csv"
    consents.write_text("sender,recipient\ns,13800000001\n")
    root = tmp_path / "snap"
    build_snapshot(root, consents)
    return root


def test_config_is_a_directory(tmp_path: Path) -> None:
    line = _one_error_line(_filterd("run", "--config", str(tmp_path)))
    assert line == f"filterd: error: config --config: {tmp_path} is a directory, not a TOML file"


def test_config_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_bytes(b"\xff\xfe[kafka]\n")
    line = _one_error_line(_filterd("replay", "--snapshot", "x", "--input", "y", "--out",
                                    str(tmp_path), "--config", str(path)))  # fmt: skip
    assert line == f"filterd: error: config --config: {path} is not UTF-8 text (invalid start byte)"


def test_replay_out_is_a_file(tmp_path: Path, snapshot_root: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text('{"id":"1","sender":"s","recipient":"13800000001"}\n')
    out = tmp_path / "out"
    out.write_text("")
    line = _one_error_line(_filterd("replay", "--snapshot", str(snapshot_root), "--input",
                                    str(events), "--out", str(out)))  # fmt: skip
    assert line == f"filterd: error: config --out: {out} is a file, not a directory"


def test_out_not_writable_is_one_line(tmp_path: Path) -> None:
    # A directory where --out needs to create something it cannot (here: under a file).
    blocker = tmp_path / "file"
    blocker.write_text("")
    consents = tmp_path / "c.csv"
    consents.write_text("sender,recipient\ns,13800000001\n")
    proc = _filterd("snapshot", "build", "--consents", str(consents), "--out",
                    str(blocker / "root"))  # fmt: skip
    line = _one_error_line(proc)
    assert line.startswith("filterd: error: ")
    assert str(blocker) in line


def test_stdout_closed_early(snapshot_root: Path) -> None:
    # `filterd snapshot inspect ROOT | head -c 1`: the reader goes away.
    proc = subprocess.Popen(
        [sys.executable, "-m", "filterd", "snapshot", "inspect", str(snapshot_root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert err.strip() == "filterd: error: output closed before it was all written"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_metrics_port_in_use(tmp_path: Path, snapshot_root: Path, busy_port: int) -> None:
    config = tmp_path / "f.toml"
    config.write_text(f'[snapshot]\nroot = "{snapshot_root}"\n[metrics]\nport = {busy_port}\n')
    proc = _filterd("run", "--config", str(config))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].endswith(
        f"start-up failed: config metrics.port: cannot listen on 127.0.0.1:{busy_port}: "
        "Address already in use"
    )
