"""Ed25519 signatures over snapshot manifests.

A version's ``manifest.json`` already holds the sha256 of every file of the version, and the
loader refuses a file whose hash differs. Signing the manifest's exact bytes therefore signs
the whole version: whoever can write the snapshot directory but does not hold the private key
cannot make filterd decide with a version of their own.

    ROOT/<version>/manifest.sig     {"algorithm": "ed25519", "key_id": ..., "signature": ...}

``key_id`` is the first 16 hex digits of the sha256 of the raw public key: it names, in an
error, which key signed a version, so a rotated key is told apart from a forged signature.
Keys are PEM files: PKCS#8 for the private key (mode 600), SubjectPublicKeyInfo for the
public one, as ``openssl genpkey -algorithm ed25519`` writes them too.

Verification costs ~60 µs per version (one signature over a few kB), done once per load,
off the event loop with the rest of the load.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from filterd.errors import SnapshotError
from filterd.snapshot.errors import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"


# cryptography is imported on use: only deployments that sign or verify pay for it.


def generate_keypair(out_dir: Path, name: str = "snapshot") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, mode 600) and ``NAME.pub`` into ``out_dir``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise SnapshotError(f"{path} exists: refusing to overwrite a key")
    out_dir.mkdir(parents=True, exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_path, pub_path


def _read(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read the {kind} key {path}: {exc.strerror}") from exc


def read_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(_read(path, "private"), password=None)
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SnapshotError(f"{path} is not an Ed25519 private key")
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_public_key(_read(path, "public"))
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SnapshotError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_file(path: Path, key_path: Path, sig_path: Path) -> str:
    """Sign the bytes of ``path`` into ``sig_path`` (written atomically); return the key id."""
    private = read_private_key(key_path)
    signature = private.sign(path.read_bytes())
    kid = key_id(private.public_key())
    body = {
        "algorithm": ALGORITHM,
        "key_id": kid,
        "signature": base64.b64encode(signature).decode(),
    }
    tmp = sig_path.with_name(f".{sig_path.name}.tmp")
    tmp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, sig_path)
    return kid


def sign_version(vdir: Path, key_path: Path) -> str:
    """Sign ``vdir/manifest.json`` with the private key; return the key id."""
    return sign_file(vdir / "manifest.json", key_path, vdir / SIGNATURE)


class Verifier:
    """Checks signatures against one public key (read once, at start-up)."""

    def __init__(self, public_key_path: Path) -> None:
        self.path = public_key_path
        self._key = read_public_key(public_key_path)
        self.key_id = key_id(self._key)

    def verify(self, vdir: Path, version: str, manifest: bytes) -> None:
        """Raise :class:`SignatureError` unless ``manifest`` carries a valid signature."""
        self.verify_bytes(manifest, vdir / SIGNATURE, f"version {version}")

    def verify_bytes(self, data: bytes, sig_path: Path, what: str) -> None:
        """Raise :class:`SignatureError` (naming ``what``) unless ``sig_path`` signs ``data``."""
        from cryptography.exceptions import InvalidSignature

        name = sig_path.name
        try:
            body = orjson.loads(sig_path.read_bytes())
        except FileNotFoundError:
            raise SignatureError(f"{what} is not signed ({name} missing)") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SignatureError(f"{what}: unreadable {name}: {exc}") from exc
        if not isinstance(body, dict) or body.get("algorithm") != ALGORITHM:
            raise SignatureError(f"{what}: {name} is not an {ALGORITHM} signature")
        signed_by = body.get("key_id")
        if signed_by != self.key_id:
            raise SignatureError(
                f"{what} is signed by key {signed_by}, not by {self.key_id} ({self.path})"
            )
        try:
            signature = base64.b64decode(str(body.get("signature", "")), validate=True)
            self._key.verify(signature, data)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"{what}: bad signature (changed after signing?)") from None


def verifier_for(public_key: str, key: str = "snapshot.public_key") -> Verifier | None:
    """The verifier of a configured public key path (None when empty); errors name ``key``."""
    from filterd.errors import ConfigError

    if not public_key:
        return None
    try:
        return Verifier(Path(public_key))
    except SnapshotError as exc:
        raise ConfigError(key, str(exc)) from None
