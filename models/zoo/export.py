"""Export the zoo's torch networks to ONNX and write them as signed packages (`python -m models.zoo.export`).

Weights come from fixed seeds, so a re-export gives the same numbers. The signing key is generated
fresh for each export, used in memory, and discarded: only its public half is committed
(models/zoo/zoo-signing.pub). The hub re-signs packages with its own key when it pushes them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.package import build_package, tensor_specs_from_onnx, verify_package
from models.signing import Ed25519PrivateKey, generate_keypair, key_id, save_public_key
from models.zoo import ZOO_DIR
from models.zoo.nets import TinyCNN, TinyMLP

OPSET = 17
MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class ZooEntry:
    """One package to export."""

    name: str
    version: str
    factory: Callable[[], nn.Module]
    seed: int
    input_shape: tuple[int, ...]  # without the batch axis
    output_name: str
    description: str


ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry("tiny-cnn", "1", TinyCNN, 1, (3, 64, 64), "scores", "Obstacle-detector stand-in: 4 class scores."),
    ZooEntry("tiny-cnn", "2", TinyCNN, 2, (3, 64, 64), "scores", "tiny-cnn with other weights (rollout tests)."),
    ZooEntry("tiny-mlp", "1", TinyMLP, 1, (64,), "logits", "MLP 64-256-256-10."),
)


def export_onnx(entry: ZooEntry, path: Path) -> None:
    """Write `entry`'s network, seeded, as ONNX with a dynamic batch axis."""
    torch.manual_seed(entry.seed)
    model = entry.factory().eval()
    example = torch.zeros((1, *entry.input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (the dynamo one needs onnxscript, absent here);
        # it and its internals warn that they are deprecated, which says nothing about the output.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=[entry.output_name],
            dynamic_axes={"input": {0: "batch"}, entry.output_name: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_zoo(out_dir: Path, private_key: Ed25519PrivateKey) -> list[Path]:
    """Export every entry into `out_dir`/packages/NAME/VERSION, replacing what was there."""
    trusted = {key_id(private_key.public_key()): private_key.public_key()}
    staging = Path(tempfile.mkdtemp(prefix=".packages.", dir=out_dir))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the packages are public
    try:
        for entry in ENTRIES:
            with tempfile.TemporaryDirectory() as scratch:
                model_path = Path(scratch) / "model.onnx"
                export_onnx(entry, model_path)
                inputs, outputs = tensor_specs_from_onnx(model_path)
                pkg = build_package(
                    model_path,
                    staging / entry.name / entry.version,
                    name=entry.name,
                    version=entry.version,
                    format="onnx",
                    inputs=inputs,
                    outputs=outputs,
                    max_batch_size=MAX_BATCH_SIZE,
                    description=entry.description,
                    private_key=private_key,
                )
            verify_package(pkg, trusted)
        final = out_dir / "packages"
        old = out_dir / ".packages.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [final / e.name / e.version for e in ENTRIES]


def main(argv: Sequence[str] | None = None) -> int:
    """Export and sign the zoo with a fresh, discarded key; write the public key next to the packages."""
    parser = argparse.ArgumentParser(prog="python -m models.zoo.export", description=__doc__)
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="directory for packages/ and zoo-signing.pub")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private_key, public_key = generate_keypair()
    paths = export_zoo(out, private_key)
    save_public_key(public_key, out / "zoo-signing.pub")
    for path in paths:
        size = (path / "model.onnx").stat().st_size
        print(f"{path}: model.onnx {size} bytes, signed by {key_id(public_key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
