"""The model registry: push (verify, re-sign with the hub key, store content-addressed), list, serve artifacts."""

from cloud_hub.registry.artifacts import ArtifactStore
from cloud_hub.registry.service import ModelRecord, ModelRegistry, PackageRejected

__all__ = ["ArtifactStore", "ModelRecord", "ModelRegistry", "PackageRejected"]
