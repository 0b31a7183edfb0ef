"""Ed25519 signatures over snapshot manifests (filterd/snapshot/signing.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from filterd.errors import SnapshotError
from filterd.snapshot.errors import SignatureError
from filterd.snapshot.signing import SIGNATURE, Verifier, generate_keypair, sign_version

MANIFEST = b'{"format": "filterd-consent-snapshot", "files": {"consents.roar": "ab12"}}\n'


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    vdir = tmp_path / "root" / "20261201T000000Z-abcdef"
    vdir.mkdir(parents=True)
    (vdir / "manifest.json").write_bytes(MANIFEST)
    return vdir


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


def test_keygen_writes_a_private_key_only_its_owner_reads(keys: tuple[Path, Path]) -> None:
    key, pub = keys
    assert key.name == "snapshot.key"
    assert pub.name == "snapshot.pub"
    assert key.stat().st_mode & 0o077 == 0
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(SnapshotError, match="refusing to overwrite"):
        generate_keypair(key.parent)


def test_signed_manifest_verifies(version_dir: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    kid = sign_version(version_dir, key)
    verifier = Verifier(pub)
    assert verifier.key_id == kid
    verifier.verify(version_dir, version_dir.name, MANIFEST)


def test_changed_manifest_is_refused(version_dir: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    sign_version(version_dir, key)
    # One character of the manifest (e.g. a file's hash rewritten by whoever swapped the file).
    tampered = MANIFEST.replace(b"ab12", b"ab13")
    with pytest.raises(SignatureError, match="bad signature"):
        Verifier(pub).verify(version_dir, version_dir.name, tampered)


def test_unsigned_version_is_refused(version_dir: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match=f"is not signed \\({SIGNATURE} missing\\)"):
        Verifier(keys[1]).verify(version_dir, version_dir.name, MANIFEST)


def test_another_keys_signature_names_both_keys(
    version_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    other_key, other_pub = generate_keypair(tmp_path / "other", "other")
    sign_version(version_dir, other_key)
    expected = Verifier(keys[1])
    with pytest.raises(SignatureError) as err:
        expected.verify(version_dir, version_dir.name, MANIFEST)
    assert Verifier(other_pub).key_id in str(err.value)
    assert expected.key_id in str(err.value)


def test_garbage_signature_file(version_dir: Path, keys: tuple[Path, Path]) -> None:
    sign_version(version_dir, keys[0])
    (version_dir / SIGNATURE).write_text('{"algorithm": "rsa"}')
    with pytest.raises(SignatureError, match="not an ed25519 signature"):
        Verifier(keys[1]).verify(version_dir, version_dir.name, MANIFEST)
    (version_dir / SIGNATURE).write_text("not json")
    with pytest.raises(SignatureError, match="unreadable"):
        Verifier(keys[1]).verify(version_dir, version_dir.name, MANIFEST)


def test_openssl_keys_work_too(version_dir: Path, tmp_path: Path) -> None:
    key, pub = tmp_path / "o.key", tmp_path / "o.pub"
    try:
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)],
                       check=True, capture_output=True)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("openssl is not installed")
    sign_version(version_dir, key)
    Verifier(pub).verify(version_dir, version_dir.name, MANIFEST)


def test_wrong_key_kinds_are_one_line_errors(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SnapshotError, match="cannot read the public key"):
        Verifier(tmp_path / "missing.pub")
    with pytest.raises(SnapshotError, match="is not a PEM public key"):
        Verifier(keys[0])  # the private key where the public one belongs
    with pytest.raises(SnapshotError, match="is not a PEM private key"):
        sign_version(tmp_path, keys[1])
