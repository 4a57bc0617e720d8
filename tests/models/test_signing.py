"""ed25519 keys, key files and manifest signatures."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from models.errors import SignatureInvalid, UnknownKey
from models.signing import (
    KeyFileError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    save_private_key,
    save_public_key,
    sign_manifest,
    verify_manifest,
)
from protocols.manifest import Manifest, PackageFile, TensorSpec
from protocols.signature import ManifestSignature


def make_manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "m",
        "version": "1",
        "format": "onnx",
        "model_file": "model.onnx",
        "inputs": (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
        "outputs": (TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
        "max_batch_size": 8,
        "files": (PackageFile(path="model.onnx", sha256="a" * 64, size=10),),
    }
    fields.update(overrides)
    return Manifest.model_validate(fields)


def test_key_id_is_sha256_prefix_of_raw_public_key() -> None:
    _, public = generate_keypair()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(generate_keypair()[1]) != key_id(public)


def test_key_files_round_trip_with_private_key_0600(tmp_path: Path) -> None:
    private, public = generate_keypair()
    save_private_key(private, tmp_path / "k" / "signing.key")
    save_public_key(public, tmp_path / "k" / "signing.pub")
    assert stat.S_IMODE((tmp_path / "k" / "signing.key").stat().st_mode) == 0o600
    assert (tmp_path / "k" / "signing.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert key_id(load_private_key(tmp_path / "k" / "signing.key").public_key()) == key_id(public)
    assert key_id(load_public_key(tmp_path / "k" / "signing.pub")) == key_id(public)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["signing.key", "signing.pub"]  # no temp files


def test_saving_replaces_an_existing_key_file(tmp_path: Path) -> None:
    first, _ = generate_keypair()
    second, _ = generate_keypair()
    save_private_key(first, tmp_path / "signing.key")
    save_private_key(second, tmp_path / "signing.key")
    assert key_id(load_private_key(tmp_path / "signing.key").public_key()) == key_id(second.public_key())


def test_load_trusted_keys_maps_key_ids(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        _, public = generate_keypair()
        save_public_key(public, tmp_path / f"{i}.pub")
        paths.append(tmp_path / f"{i}.pub")
    trusted = load_trusted_keys(paths)
    assert set(trusted) == {key_id(load_public_key(p)) for p in paths}


def test_bad_key_files_raise_key_file_error(tmp_path: Path) -> None:
    _, public = generate_keypair()
    save_public_key(public, tmp_path / "signing.pub")
    (tmp_path / "garbage.pem").write_text("not a key")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match=r"cannot read key file .*missing\.key"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match=r"signing\.pub.* not an unencrypted PEM private key"):
        load_private_key(tmp_path / "signing.pub")
    with pytest.raises(KeyFileError, match=r"garbage\.pem.* not a PEM public key"):
        load_public_key(tmp_path / "garbage.pem")
    with pytest.raises(KeyFileError, match="not an ed25519 private key"):
        load_private_key(tmp_path / "ec.key")


def test_sign_and_verify() -> None:
    private, public = generate_keypair()
    manifest = make_manifest()
    signature = sign_manifest(manifest, private)
    assert signature.key_id == key_id(public)
    assert len(base64.b64decode(signature.signature)) == 64
    verify_manifest(manifest, signature, {key_id(public): public})


def test_signature_covers_every_manifest_field() -> None:
    private, public = generate_keypair()
    signature = sign_manifest(make_manifest(), private)
    trusted = {key_id(public): public}
    for change in ({"max_batch_size": 4}, {"version": "2"}, {"description": "x"}, {"precision": ("fp16",)}):
        with pytest.raises(SignatureInvalid, match=f"key '{key_id(public)}' does not match manifest 'm'"):
            verify_manifest(make_manifest(**change), signature, trusted)


def test_unknown_key_is_named() -> None:
    private, _ = generate_keypair()
    _, other = generate_keypair()
    signature = sign_manifest(make_manifest(), private)
    with pytest.raises(UnknownKey, match=f"untrusted key '{signature.key_id}' \\(trusted: {key_id(other)}\\)"):
        verify_manifest(make_manifest(), signature, {key_id(other): other})
    with pytest.raises(UnknownKey, match="trusted: none"):
        verify_manifest(make_manifest(), signature, {})


def test_trusted_key_id_with_a_signature_by_another_key_is_invalid() -> None:
    _, public = generate_keypair()
    forger, _ = generate_keypair()
    forged = sign_manifest(make_manifest(), forger).model_copy(update={"key_id": key_id(public)})
    with pytest.raises(SignatureInvalid, match=key_id(public)):
        verify_manifest(make_manifest(), forged, {key_id(public): public})


def test_signature_model_is_strict() -> None:
    good = {
        "v": 1,
        "algorithm": "ed25519",
        "key_id": "0123456789abcdef",
        "signature": base64.b64encode(b"s" * 64).decode(),
    }
    sig = ManifestSignature.model_validate(good)
    with pytest.raises(ValidationError):
        sig.key_id = "x"  # type: ignore[misc]
    bad_cases = [
        {"signature": base64.b64encode(b"s" * 63).decode()},
        {"signature": "!!!not base64!!!"},
        {"algorithm": "rsa"},
        {"key_id": "0123456789ABCDEF"},
        {"key_id": "0123"},
        {"v": 2},
        {"extra": 1},
    ]
    for bad in bad_cases:
        with pytest.raises(ValidationError):
            ManifestSignature.model_validate({**good, **bad})
