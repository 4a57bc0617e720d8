"""Errors of the models package: one base, one subclass per thing that can go wrong."""

from __future__ import annotations


class ModelsError(Exception):
    """Base of every error raised by `models`."""


class PackageError(ModelsError):
    """A model package is malformed or fails verification."""


class ManifestInvalid(PackageError):
    """manifest.json is missing, not JSON, or does not match the schema."""


class MissingFile(PackageError):
    """A file named in the manifest is absent from the package."""


class UnexpectedFile(PackageError):
    """The package holds a file the manifest does not name."""


class SizeMismatch(PackageError):
    """A file's size differs from the manifest."""


class HashMismatch(PackageError):
    """A file's sha256 differs from the manifest."""


class SignatureMissing(PackageError):
    """The package carries no signature but one is required."""


class SignatureInvalid(PackageError):
    """The signature does not verify against the manifest with the named key."""


class UnknownKey(PackageError):
    """The package is signed by a key that is not trusted."""


class UnsafePath(PackageError):
    """A path in the package or archive escapes the package directory."""


class KeyFileError(ModelsError):
    """A key file is missing, unreadable, or not an ed25519 key in PEM."""


class RuntimeFailure(ModelsError):
    """A runtime failed to load, warm up or run a batch."""


class RuntimeUnavailable(RuntimeFailure):
    """The backend (or its accelerator) is not installed or usable on this machine."""


class InputError(ModelsError):
    """Inputs given to a runtime do not match its metadata (names, datatypes, shapes)."""
