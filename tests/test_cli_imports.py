"""``filterd --version`` and the offline commands load neither aiokafka nor prometheus_client.

Each case runs the command line in a fresh interpreter and lists the heavy
packages in ``sys.modules`` when the command is done (or exits).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from filterd.cli import COMMANDS, build_parser

HEAVY = ("aiokafka", "prometheus_client")

_PROBE = """
import json, sys
from filterd.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
print(json.dumps({"code": code, "heavy": heavy}))
""".replace("HEAVY", repr(HEAVY))


def _run(*argv: str, cwd: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert result.stdout, result.stderr
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return report


def _events(path: Path) -> Path:
    path.write_text('{"id": "1", "sender": "s", "recipient": "+8613800000001"}\n')
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ("--version",),
        ("snapshot", "build", "--consents", "{consents}", "--out", "{root}"),
        ("snapshot", "inspect", "{root}"),
        ("snapshot", "verify", "{root}"),
        ("replay", "--snapshot", "{root}", "--input", "{events}", "--out", "{out}"),
    ],
)
def test_offline_commands_load_no_kafka_client_and_no_metrics(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    consents = tmp_path / "consents.csv"
    consents.write_text("sender,recipient\ns,+8613800000001\n")
    root = tmp_path / "snap"
    if argv[:2] != ("snapshot", "build") and argv[0] != "--version":
        assert _run("snapshot", "build", "--consents", str(consents), "--out", str(root),
                    cwd=tmp_path)["code"] == 0  # fmt: skip
    values = {"consents": consents, "root": root, "events": _events(tmp_path / "e.jsonl"),
              "out": tmp_path / "out"}  # fmt: skip
    report = _run(*(a.format(**values) for a in argv), cwd=tmp_path)
    assert report["code"] == 0
    assert report["heavy"] == []


def test_the_probe_sees_heavy_imports(tmp_path: Path) -> None:
    # A broker command does load the client: the probe above can fail.
    report = _run("topics", "--help", cwd=tmp_path)
    assert report["heavy"] == ["aiokafka"]


def test_every_command_is_registered_by_its_module() -> None:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    assert set(subparsers.choices) == set(COMMANDS)  # type: ignore[arg-type]
    for command, module in COMMANDS.items():
        alone = build_parser([command])
        (sub,) = [a for a in alone._actions if a.dest == "command"]
        assert command in sub.choices, (command, module)  # type: ignore[operator]
