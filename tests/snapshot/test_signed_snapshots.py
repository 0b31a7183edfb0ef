"""Signed snapshots end to end: the CLI, the watcher's refusals, rollback, replay."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.errors import ConfigError
from filterd.snapshot import SnapshotWatcher, build_snapshot
from filterd.snapshot import format as fmt
from filterd.snapshot.signing import SIGNATURE, Verifier, generate_keypair, verifier_for
from tests.support.stream import run_cli

from .data import write_csv

BASE = 8613800000000


@pytest.fixture(autouse=True)
def _gc_restored() -> Iterator[None]:
    yield
    assert gc.isenabled()
    gc.unfreeze()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


def _build(tmp: Path, root: Path, k: int, key: Path | None) -> str:
    path = write_csv(tmp / f"c{k}.csv", ["sender", "recipient"], [("s", f"+{BASE + k}")])
    return build_snapshot(root, path, keep=100, sign_key=key)


def test_cli_keygen_build_sign_verify(tmp_path: Path) -> None:
    assert run_cli("snapshot", "keygen", "--out", str(tmp_path / "k")).returncode == 0
    key, pub = tmp_path / "k" / "snapshot.key", tmp_path / "k" / "snapshot.pub"
    consents = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("s", f"+{BASE}")])
    root = tmp_path / "root"
    signed = run_cli("snapshot", "build", "--consents", str(consents), "--out", str(root),
                  "--sign-key", str(key)).stdout.strip()  # fmt: skip
    ok = run_cli("snapshot", "verify", str(root), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{signed}: ok, signed by key {Verifier(pub).key_id}"

    unsigned = run_cli("snapshot", "build", "--consents", str(consents), "--out", str(root))
    version = unsigned.stdout.strip()
    refused = run_cli("snapshot", "verify", str(root), "--public-key", str(pub))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"{version}: version {version} is not signed ({SIGNATURE} missing)"
    )
    inspect = run_cli("snapshot", "inspect", str(root), "--public-key", str(pub))
    assert inspect.returncode == 1
    assert inspect.stderr.strip() == (
        f"filterd: error: version {version} is not signed ({SIGNATURE} missing)"
    )
    assert run_cli("snapshot", "sign", str(root), "--key", str(key)).returncode == 0
    assert run_cli("snapshot", "verify", str(root), "--public-key", str(pub)).returncode == 0


def test_rewritten_files_and_hashes_fail_the_signature(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    version = _build(tmp_path, root, 1, keys[0])
    # An attacker swaps a data file and rewrites its hash in the manifest: the checksums
    # agree again, the signature does not.
    manifest = root / version / fmt.MANIFEST
    text = manifest.read_text()
    manifest.write_text(text.replace('"created_at":"', '"created_at":"1', 1))
    proc = run_cli("snapshot", "verify", str(root), "--public-key", str(keys[1]))
    assert proc.returncode == 1
    assert "bad signature" in proc.stderr


async def test_watcher_refuses_unsigned_and_keeps_the_old(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    v1 = _build(tmp_path, root, 1, keys[0])
    refused: list[str] = []
    watcher = SnapshotWatcher(
        root, 60, verifier=Verifier(keys[1]), on_refused=lambda v, e: refused.append(str(e))
    )
    await watcher.check()
    assert watcher.current is not None
    assert watcher.current.version == v1
    v2 = _build(tmp_path, root, 2, None)
    await watcher.check()
    assert watcher.current.version == v1
    assert refused == [f"version {v2} is not signed ({SIGNATURE} missing)"]
    other_key, _ = generate_keypair(tmp_path / "other", "other")
    v3 = _build(tmp_path, root, 3, other_key)
    await watcher.check()
    assert watcher.current.version == v1
    assert f"version {v3} is signed by key" in refused[-1]
    v4 = _build(tmp_path, root, 4, keys[0])
    await watcher.check()
    assert watcher.current.version == v4


async def test_an_older_version_needs_a_rollback(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    root = tmp_path / "root"
    v1 = _build(tmp_path, root, 1, keys[0])
    v2 = _build(tmp_path, root, 2, keys[0])
    refused: list[str] = []
    watcher = SnapshotWatcher(
        root, 60, verifier=Verifier(keys[1]), on_refused=lambda v, e: refused.append(str(e))
    )
    await watcher.check()
    assert watcher.current is not None
    assert watcher.current.version == v2
    # The pointer moved back by hand (a stale publisher, or someone reviving old consents).
    fmt.publish_pointer(root, v1)
    await watcher.check()
    assert watcher.current.version == v2
    assert refused[-1] == (
        f"version {v1} is older than {v2} in force; go back with `filterd snapshot rollback`"
    )
    # An unsigned rollback is not enough where signatures are checked.
    proc = run_cli("snapshot", "rollback", str(root), "--to", v1)
    assert proc.stdout.strip() == f"rollback to {v1} recorded under {root} (already current)"
    await watcher.check()
    assert watcher.current.version == v2
    assert refused[-1] == (
        f"rollback to {v1} is not signed (rollback.json.sig missing): "
        "sign it with `filterd snapshot rollback --key`"
    )
    proc = run_cli("snapshot", "rollback", str(root), "--to", v1, "--key", str(keys[0]))
    assert proc.returncode == 0, proc.stderr
    await watcher.check()
    assert watcher.current.version == v1


async def test_without_a_key_rollback_is_still_explicit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = _build(tmp_path, root, 1, None)
    v2 = _build(tmp_path, root, 2, None)
    watcher = SnapshotWatcher(root, 60)
    await watcher.check()
    fmt.publish_pointer(root, v1)
    await watcher.check()
    assert watcher.current is not None
    assert watcher.current.version == v2
    fmt.publish_pointer(root, v2)
    assert run_cli("snapshot", "rollback", str(root)).returncode == 0
    await watcher.check()
    assert watcher.current.version == v1


def test_replay_refuses_an_unsigned_snapshot(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    root = tmp_path / "root"
    version = _build(tmp_path, root, 1, None)
    config = tmp_path / "f.toml"
    config.write_text(f'[snapshot]\npublic_key = "{keys[1]}"\n')
    events = tmp_path / "e.jsonl"
    events.write_text('{"id":"1","sender":"s","recipient":"13800000001"}\n')
    proc = run_cli("replay", "--snapshot", str(root), "--input", str(events),
                "--out", str(tmp_path / "out"), "--config", str(config))  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"filterd: error: version {version} is not signed ({SIGNATURE} missing)"
    )


def test_a_bad_public_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config snapshot\.public_key: cannot read"):
        verifier_for(str(tmp_path / "missing.pub"))
    assert verifier_for("") is None
