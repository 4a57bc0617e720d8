"""Push, list and look up model packages.

A push is verified (the manifest's files, sizes and sha256 always; the publisher's signature when the
package carries one, against the hub's own key and the keys in data-dir/trusted-publishers/; an unsigned
package only with `allow_unsigned`), re-signed with the hub's key, packed deterministically and stored
under the sha256 of the tar. The same package pushed twice is one row; another package under an existing
name and version is refused (409).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.errors import Conflict, InvalidRequest, NotFound
from cloud_hub.files import private_dir, write_atomic
from cloud_hub.pki import HubIdentity
from cloud_hub.registry.artifacts import ArtifactStore
from cloud_hub.store import Store
from cloud_hub.store import models as model_rows
from models import signing
from models.errors import ModelsError
from models.package import open_package, pack_tar, package_sha256, sign_package, verify_package
from protocols.manifest import Manifest
from protocols.messages import DesiredModel
from protocols.signature import ManifestSignature

log = logging.getLogger(__name__)

ARTIFACT_PATH = "/api/v1/artifacts/{sha256}.tar"


class PackageRejected(InvalidRequest):
    """The pushed package failed verification (files, hashes, signature, trust)."""


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A pushed model version as the registry keeps it."""

    name: str
    version: str
    sha256: str
    package_sha256: str
    size: int
    manifest: dict[str, Any]
    signature: dict[str, Any]
    publisher_key_id: str | None
    pushed_at: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelRecord:
        """Build from a `models` row."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    def desired(self, hub_url: str) -> DesiredModel:
        """This version as an entry of a device's desired state."""
        return DesiredModel(
            name=self.name,
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            url=hub_url.rstrip("/") + ARTIFACT_PATH.format(sha256=self.sha256),
            signature=ManifestSignature.model_validate(self.signature),
        )


async def get_model(conn: AsyncConnection, name: str, version: str) -> ModelRecord | None:
    """One model version, or None."""
    row = await model_rows.get(conn, name, version)
    return None if row is None else ModelRecord.from_row(row)


class ModelRegistry:
    """The registry service behind `cloud-hub models ...` and the artifact endpoint."""

    def __init__(self, store: Store, identity: HubIdentity, hub_url: str) -> None:
        self.store = store
        self.identity = identity
        self.hub_url = hub_url
        self.artifacts = ArtifactStore(identity.paths.data_dir / "artifacts")
        self.publishers_dir = identity.paths.data_dir / "trusted-publishers"

    # --- trust ----------------------------------------------------------------------------------------

    def trusted_keys(self) -> dict[str, signing.Ed25519PublicKey]:
        """The hub's own key plus every key in trusted-publishers/ (re-read at each push)."""
        keys = {signing.key_id(self.identity.signing_key.public_key()): self.identity.signing_key.public_key()}
        if self.publishers_dir.is_dir():
            keys.update(signing.load_trusted_keys(sorted(self.publishers_dir.glob("*.pub"))))
        return keys

    def trust_key(self, pem: bytes) -> str:
        """Add a publisher's ed25519 public key (PEM); return its key id."""
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, signing.Ed25519PublicKey):
            raise InvalidRequest(f"publisher keys are ed25519, not {type(key).__name__}")
        kid = signing.key_id(key)
        private_dir(self.publishers_dir)
        write_atomic(self.publishers_dir / f"{kid}.pub", signing.public_key_pem(key), 0o644)
        log.info("trusting model publisher key %s", kid)
        return kid

    def publisher_keys(self) -> list[dict[str, str]]:
        """[{key_id, public_key_pem, source}] of every key a push may be signed by."""
        hub_kid = signing.key_id(self.identity.signing_key.public_key())
        return [
            {
                "key_id": kid,
                "public_key_pem": signing.public_key_pem(key).decode(),
                "source": "hub" if kid == hub_kid else "trusted-publishers",
            }
            for kid, key in sorted(self.trusted_keys().items())
        ]

    # --- push -----------------------------------------------------------------------------------------

    def new_upload(self) -> Path:
        """A private folder for one upload; `push` removes it."""
        return self.artifacts.temp_dir()

    async def push(self, upload: Path, *, allow_unsigned: bool = False) -> tuple[ModelRecord, bool]:
        """Verify, re-sign and store the package at `upload` (a tar in a `new_upload` folder).

        Returns (record, created): created is False when the same package was already stored.
        """
        workdir = upload.parent
        try:
            prepared = await asyncio.to_thread(self._prepare, upload, allow_unsigned)
            return await self._record(*prepared)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    def _prepare(self, upload: Path, allow_unsigned: bool) -> tuple[Path, dict[str, Any], str | None, dict[str, Any]]:
        pkg_dir = upload.parent / "package"
        try:
            pkg = open_package(upload, extract_to=pkg_dir)
            verify_package(pkg, self.trusted_keys(), require_signature=not allow_unsigned)
            publisher = pkg.signature.key_id if pkg.signature is not None else None
            signed = sign_package(pkg_dir, self.identity.signing_key)
            out = pack_tar(pkg_dir, upload.parent / "signed.tar")
        except ModelsError as exc:
            raise PackageRejected(f"package rejected: {exc}") from exc
        assert signed.signature is not None  # sign_package always signs
        return out, signed.manifest.model_dump(mode="json"), publisher, signed.signature.model_dump(mode="json")

    async def _record(
        self, tar: Path, manifest: dict[str, Any], publisher: str | None, signature: dict[str, Any]
    ) -> tuple[ModelRecord, bool]:
        name, version = manifest["name"], manifest["version"]
        pkg_sha = package_sha256(Manifest.model_validate(manifest))
        async with self.store.begin() as conn:
            existing = await get_model(conn, name, version)
        if existing is not None:
            return self._same(existing, pkg_sha), False
        sha, size = await asyncio.to_thread(self.artifacts.adopt, tar)
        record = ModelRecord(name, version, sha, pkg_sha, size, manifest, signature, publisher, time.time())
        try:
            async with self.store.begin() as conn:
                await model_rows.insert_model(conn, record.to_json())
        except IntegrityError:
            # A concurrent push of the same name and version won the insert.
            async with self.store.begin() as conn:
                existing = await get_model(conn, name, version)
            if existing is None:
                raise
            return self._same(existing, pkg_sha), False
        log.info("pushed model %s %s (%d bytes, sha256 %s)", name, version, size, sha)
        return record, True

    @staticmethod
    def _same(existing: ModelRecord, pkg_sha: str) -> ModelRecord:
        if existing.package_sha256 != pkg_sha:
            raise Conflict(
                f"model {existing.name!r} version {existing.version!r} already exists with other content "
                f"(package sha256 {existing.package_sha256}); push it under a new version"
            )
        return existing

    # --- reads ----------------------------------------------------------------------------------------

    async def list(self, name: str | None = None) -> list[ModelRecord]:
        """Every pushed version (optionally of one model), by name then push time."""
        async with self.store.begin() as conn:
            return [ModelRecord.from_row(r) for r in await model_rows.list_rows(conn, name)]

    async def get(self, name: str, version: str) -> ModelRecord:
        """One version; NotFound if absent."""
        async with self.store.begin() as conn:
            record = await get_model(conn, name, version)
        if record is None:
            raise NotFound(f"no model {name!r} version {version!r}")
        return record

    async def artifact(self, sha256: str) -> Path:
        """The stored tar with this sha256; NotFound unless a pushed model refers to it."""
        path = self.artifacts.path(sha256)
        async with self.store.begin() as conn:
            known = await model_rows.has_artifact(conn, sha256)
        if not known or not path.is_file():
            raise NotFound(f"no artifact {sha256}")
        return path
