"""Verification of artifacts against the keys pinned at provisioning (never keys that came with a download).

The signature that counts is the one in the desired state (`DesiredModel.signature`, the hub's signature
over the manifest). The tar's own `manifest.sig.json` is ignored: after extraction it is replaced by the
desired signature, and the package is then verified as a whole (signature over the manifest, every file's
size and sha256, no file the manifest does not name). So the copy that is installed carries the signature
that was checked, and a later integrity check of the installed copy (rollback) needs no download.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge_agent.reconcile.errors import VerificationError
from models.atomic import write_atomic
from models.errors import PackageError
from models.package import ModelPackage, open_package, verify_package
from models.signing import Ed25519PublicKey, key_id
from protocols.manifest import SIGNATURE_FILE
from protocols.messages import DesiredModel, SigningKey

__all__ = ["pinned_keys", "verify_artifact", "verify_installed"]

log = logging.getLogger(__name__)


def pinned_keys(keys: Sequence[SigningKey]) -> dict[str, Ed25519PublicKey]:
    """The hub's model-signing keys from provisioning, by key id (the id is recomputed, not trusted)."""
    found: dict[str, Ed25519PublicKey] = {}
    for entry in keys:
        try:
            key = serialization.load_pem_public_key(entry.public_key_pem.encode())
        except ValueError as exc:
            raise VerificationError(f"pinned signing key {entry.key_id} is not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise VerificationError(f"pinned signing key {entry.key_id} is not an ed25519 key")
        if key_id(key) != entry.key_id:
            raise VerificationError(f"pinned signing key {entry.key_id} has id {key_id(key)}")
        found[entry.key_id] = key
    return found


def _check_identity(pkg: ModelPackage, model: DesiredModel) -> None:
    manifest = pkg.manifest
    if (manifest.name, manifest.version) != (model.name, model.version):
        raise VerificationError(
            f"artifact is {manifest.name}:{manifest.version}, desired state names {model.name}:{model.version}"
        )


def verify_artifact(
    tar: Path, model: DesiredModel, keys: Mapping[str, Ed25519PublicKey], staging: Path
) -> ModelPackage:
    """Extract `tar` into `staging` (replaced) and verify it; the verified package (blocking I/O)."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        opened = open_package(tar, extract_to=staging)
        _check_identity(opened, model)
        if opened.signature is not None and opened.signature != model.signature:
            log.info("%s:%s: the archive's own signature differs from the desired one; using the desired one",
                     model.name, model.version)  # fmt: skip
        write_atomic(staging / SIGNATURE_FILE, model.signature.model_dump_json().encode())
        pkg = ModelPackage(path=staging, manifest=opened.manifest, signature=model.signature)
        verify_package(pkg, keys, require_signature=True)
    except PackageError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise VerificationError(f"{model.name}:{model.version} failed verification: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return pkg


def verify_installed(pkg: ModelPackage, model: DesiredModel, keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Check an installed copy against the desired entry: same manifest as the hub signed, intact files."""
    _check_identity(pkg, model)
    try:
        verify_package(ModelPackage(pkg.path, pkg.manifest, model.signature), keys, require_signature=True)
    except PackageError as exc:
        raise VerificationError(f"installed {model.name}:{model.version} failed verification: {exc}") from exc
