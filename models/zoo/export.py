"""Export the zoo to ONNX and write it as signed packages (`python -m models.zoo.export`).

The torch networks (models/zoo/nets.py) need torch; the string model (text-echo) is an ONNX graph built with
the `onnx` helper API. `--reuse-onnx` keeps the committed model.onnx of the torch entries (same bytes, same
outputs) and only re-signs them: the way to add a package on a machine without torch. Weights come from
fixed seeds, so a re-export gives the same numbers. The signing key is generated fresh for each export, used
in memory, and discarded: only its public half is committed (models/zoo/zoo-signing.pub), so every package is
signed again on each export. The hub re-signs packages with its own key when it pushes them.
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
from typing import Any

from models.package import build_package, tensor_specs_from_onnx, verify_package
from models.signing import Ed25519PrivateKey, generate_keypair, key_id, save_public_key
from models.zoo import LABELS_FILE, PACKAGES_DIR, ZOO_DIR

OPSET = 17
MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class ZooEntry:
    """One package to export: a torch network (`net`, a class name in models/zoo/nets.py) or an ONNX graph
    built without torch (`graph`)."""

    name: str
    version: str
    net: str | None
    seed: int
    input_shape: tuple[int, ...]  # without the batch axis
    output_name: str
    description: str
    graph: Callable[[], bytes] | None = None
    labels: tuple[str, ...] = ()  # written as labels.txt: Triton-style class labels of the output


def text_echo_onnx() -> bytes:
    """text BYTES [N,1] -> echo BYTES [N,1], the same strings: the zoo's string (BYTES) model."""
    from onnx import TensorProto, checker, helper

    text = helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])
    echo = helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 1])
    graph = helper.make_graph([helper.make_node("Identity", ["text"], ["echo"])], "text_echo", [text], [echo])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet")
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


CNN = ("clear", "pedestrian", "vehicle", "obstacle")
ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry("text-echo", "1", None, 0, (1,), "echo", "String (BYTES) identity.", graph=text_echo_onnx),
    ZooEntry(
        "tiny-cnn", "1", "TinyCNN", 1, (3, 64, 64), "scores", "Obstacle-detector stand-in: 4 class scores.", labels=CNN
    ),
    ZooEntry(
        "tiny-cnn", "2", "TinyCNN", 2, (3, 64, 64), "scores", "tiny-cnn with other weights (rollout tests).", labels=CNN
    ),
    ZooEntry("tiny-mlp", "1", "TinyMLP", 1, (64,), "logits", "MLP 64-256-256-10."),
    ZooEntry(
        "mobilenet-v2",
        "1",
        "MobileNetV2",
        1,
        (3, 160, 160),
        "scores",
        "Vision backbone stand-in where compute dominates intake: MobileNetV2 width 0.5, 10 scores, random weights.",
    ),
)


def write_onnx(entry: ZooEntry, path: Path, *, reuse_from: Path | None = None) -> None:
    """Write `entry`'s ONNX model to `path`: built graph, committed file (`reuse_from`), or torch export."""
    if entry.graph is not None:
        path.write_bytes(entry.graph())
    elif reuse_from is not None:
        committed = reuse_from / entry.name / entry.version / "model.onnx"
        if not committed.is_file():
            raise FileNotFoundError(f"--reuse-onnx: no committed {committed}")
        shutil.copyfile(committed, path)
    else:
        export_onnx(entry, path)


def export_onnx(entry: ZooEntry, path: Path) -> None:
    """Write `entry`'s torch network, seeded, as ONNX with a dynamic batch axis (needs torch)."""
    import torch

    from models.zoo import nets

    torch.manual_seed(entry.seed)
    factory: Any = getattr(nets, str(entry.net))
    model = factory().eval()
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


def export_zoo(out_dir: Path, private_key: Ed25519PrivateKey, *, reuse_from: Path | None = None) -> list[Path]:
    """Export every entry into `out_dir`/packages/NAME/VERSION, replacing what was there; `reuse_from`
    (a packages directory) supplies the torch entries' model.onnx instead of exporting them."""
    trusted = {key_id(private_key.public_key()): private_key.public_key()}
    staging = Path(tempfile.mkdtemp(prefix=".packages.", dir=out_dir))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the packages are public
    try:
        for entry in ENTRIES:
            with tempfile.TemporaryDirectory() as scratch:
                model_path = Path(scratch) / "model.onnx"
                write_onnx(entry, model_path, reuse_from=reuse_from)
                inputs, outputs = tensor_specs_from_onnx(model_path)
                files = [model_path]
                if entry.labels:
                    files.append(Path(scratch) / LABELS_FILE)
                    files[-1].write_text("".join(f"{label}\n" for label in entry.labels), encoding="utf-8")
                pkg = build_package(
                    files,
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
    parser.add_argument(
        "--reuse-onnx",
        nargs="?",
        type=Path,
        const=PACKAGES_DIR,
        default=None,
        metavar="PACKAGES",
        help="re-sign the torch entries' committed model.onnx (default: the zoo's packages) instead of exporting",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private_key, public_key = generate_keypair()
    paths = export_zoo(out, private_key, reuse_from=args.reuse_onnx)
    save_public_key(public_key, out / "zoo-signing.pub")
    for path in paths:
        size = (path / "model.onnx").stat().st_size
        print(f"{path}: model.onnx {size} bytes, signed by {key_id(public_key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
