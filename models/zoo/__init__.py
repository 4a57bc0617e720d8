"""The model zoo: small signed packages committed to the repo for tests, the demo and benchmarks.

Regenerate with `python -m models.zoo.export` (needs torch; `--reuse-onnx` re-signs the committed torch models
without it). Using the packages needs only onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from models.signing import Ed25519PublicKey, key_id, load_public_key

__all__ = [
    "LABELS_FILE",
    "PACKAGES_DIR",
    "ZOO_DIR",
    "ZOO_MODELS",
    "ZOO_PUBLIC_KEY_FILE",
    "zoo_package_path",
    "zoo_public_key",
    "zoo_trusted_keys",
]

ZOO_DIR = Path(__file__).resolve().parent
PACKAGES_DIR = ZOO_DIR / "packages"
ZOO_PUBLIC_KEY_FILE = ZOO_DIR / "zoo-signing.pub"
# A package file of class labels, one per line, for classification outputs (Triton's label_filename).
LABELS_FILE = "labels.txt"
# (name, version) of every committed package; tiny-cnn 2 has other weights than 1 (rollout tests); text-echo
# is the string (BYTES) identity model; mobilenet-v2 the compute-dominated vision model of bench/overload.py.
ZOO_MODELS: tuple[tuple[str, str], ...] = (
    ("mobilenet-v2", "1"),
    ("text-echo", "1"),
    ("tiny-cnn", "1"),
    ("tiny-cnn", "2"),
    ("tiny-mlp", "1"),
)


def zoo_package_path(name: str, version: str | int) -> Path:
    """Directory of a committed zoo package; LookupError naming the known ones if absent."""
    version = str(version)
    if (name, version) not in ZOO_MODELS:
        known = ", ".join(f"{n}/{v}" for n, v in ZOO_MODELS)
        raise LookupError(f"no zoo package {name}/{version} (known: {known})")
    return PACKAGES_DIR / name / version


def zoo_public_key() -> Ed25519PublicKey:
    """The public key that signed the committed zoo packages."""
    return load_public_key(ZOO_PUBLIC_KEY_FILE)


def zoo_trusted_keys() -> dict[str, Ed25519PublicKey]:
    """`{key_id: key}` for the zoo key, ready for `verify_package`."""
    key = zoo_public_key()
    return {key_id(key): key}
