"""ed25519 signing of model package manifests, and key files that survive a crash."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.atomic import write_atomic
from models.errors import KeyFileError, SignatureInvalid, UnknownKey
from protocols.manifest import Manifest
from protocols.signature import ManifestSignature

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyFileError",
    "ManifestSignature",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "public_key_pem",
    "save_private_key",
    "save_public_key",
    "sign_manifest",
    "verify_manifest",
]

KEY_ID_HEX_CHARS = 16


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """A fresh ed25519 key pair."""
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex chars of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def save_private_key(private_key: Ed25519PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write the private key as unencrypted PKCS8 PEM, atomically, with mode 0600."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(Path(path), pem, 0o600)


def save_public_key(public_key: Ed25519PublicKey, path: str | os.PathLike[str]) -> None:
    """Write the public key as PEM, atomically, with mode 0644."""
    write_atomic(Path(path), public_key_pem(public_key), 0o644)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {str(path)!r}: {exc.strerror or exc}") from exc


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS8 PEM ed25519 private key."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(_read(p), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{str(p)!r} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{str(p)!r} holds a {type(key).__name__}, not an ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM ed25519 public key."""
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(_read(p))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{str(p)!r} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{str(p)!r} holds a {type(key).__name__}, not an ed25519 public key")
    return key


def load_trusted_keys(paths: list[str] | list[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys from PEM files, keyed by key id."""
    return {key_id(k): k for k in (load_public_key(p) for p in paths)}


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> ManifestSignature:
    """Sign the manifest's canonical bytes."""
    raw = private_key.sign(manifest.canonical_bytes())
    return ManifestSignature(
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(raw).decode("ascii"),
    )


def verify_manifest(
    manifest: Manifest,
    signature: ManifestSignature,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    """Check `signature` over the manifest with a trusted key; UnknownKey or SignatureInvalid if not."""
    public_key = trusted.get(signature.key_id)
    if public_key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise UnknownKey(f"manifest signed by untrusted key {signature.key_id!r} (trusted: {known})")
    try:
        public_key.verify(signature.signature_bytes(), manifest.canonical_bytes())
    except InvalidSignature as exc:
        raise SignatureInvalid(
            f"signature by key {signature.key_id!r} does not match manifest "
            f"{manifest.name!r} version {manifest.version!r}"
        ) from exc
