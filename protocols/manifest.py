"""The model package manifest: what a package holds and how to feed it."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, field_validator, model_validator

from protocols.common import Name, Sha256Hex, Version, WireModel
from protocols.datatypes import Datatype

Precision = Literal["fp32", "fp16", "int8"]
ModelFormat = Literal["onnx", "torchscript", "torch_exported_program"]

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig.json"


class TensorSpec(WireModel):
    """One input or output tensor: V2 datatype and shape, -1 for a dynamic dimension."""

    name: Name = Field(description="Tensor name as the model and the V2 API call it.")
    datatype: Datatype = Field(description="KServe V2 datatype.")
    shape: tuple[Annotated[int, Field(ge=-1)], ...] = Field(
        description="Full shape including the batch axis (first, -1) when max_batch_size > 0."
    )


class PackageFile(WireModel):
    """A file of the package, addressed by a relative POSIX path."""

    path: str = Field(description="Relative path inside the package; no '..', no absolute paths.")
    sha256: Sha256Hex = Field(description="Hex sha256 of the file's bytes.")
    size: NonNegativeInt = Field(description="Size in bytes.")

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        parts = value.split("/")
        if (
            not value
            or value.startswith("/")
            or "\\" in value
            or any(p in ("", ".", "..") for p in parts)
            or value in (MANIFEST_FILE, SIGNATURE_FILE)
        ):
            raise ValueError(f"unsafe or reserved package file path {value!r}")
        return value


class Manifest(WireModel):
    """manifest.json of a model package. Signed (detached, ed25519) over its canonical JSON."""

    v: Literal[1] = Field(default=1, description="Manifest schema version.")
    name: Name = Field(description="Model name.")
    version: Version = Field(description="Model version.")
    format: ModelFormat = Field(description="Format of the model file named by `model_file`.")
    model_file: str = Field(description="Path (one of `files`) of the model to load.")
    inputs: tuple[TensorSpec, ...] = Field(min_length=1, description="Model inputs.")
    outputs: tuple[TensorSpec, ...] = Field(min_length=1, description="Model outputs.")
    max_batch_size: NonNegativeInt = Field(
        description="Largest batch the model accepts; 0 = no batch axis (requests are run one by one)."
    )
    precision: tuple[Precision, ...] = Field(
        default=("fp32",), min_length=1, description="Precisions the model may be compiled to, best first."
    )
    files: tuple[PackageFile, ...] = Field(min_length=1, description="Every file of the package but the manifest.")
    description: str = Field(default="", max_length=1000, description="Free text for operators.")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file paths in manifest")
        if self.model_file not in paths:
            raise ValueError(f"model_file {self.model_file!r} is not listed in files")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in manifest")
        if self.max_batch_size > 0:
            for t in (*self.inputs, *self.outputs):
                if not t.shape or t.shape[0] != -1:
                    raise ValueError(f"tensor {t.name!r}: batch axis must come first as -1 when batching")
        return self

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.model_dump(mode="json"))

    def file(self, path: str) -> PackageFile:
        """The entry for `path`; KeyError if absent."""
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON encoding used for signatures."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
