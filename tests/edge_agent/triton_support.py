"""The models Triton's example clients expect (`simple`, `simple_string`, `simple_identity`), built as signed
packages for a test.

Triton's examples (triton-inference-server/client src/python/examples) call a model repository of their own:
`simple` adds and subtracts two INT32 [16] tensors, `simple_string` does the same on numbers written as
strings, `simple_identity` returns its BYTES [16] input (`simple_http_string_infer_client.py` sends it text
with an embedded NUL and 4-byte blobs). These are the same graphs in ONNX, built with the `onnx` helper API
and signed with a test key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_support import AgentProcess, start_agent

from models.package import build_package, tensor_specs_from_onnx
from models.signing import generate_keypair, save_public_key
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE


def _identity(path: Path) -> None:
    """INPUT0 [-1,16] BYTES -> OUTPUT0, the same tensor."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["N", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["N", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _add_sub(path: Path, *, strings: bool) -> None:
    """INPUT0, INPUT1 [-1,16] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 or as strings)."""
    import onnx
    from onnx import TensorProto, helper

    kind = TensorProto.STRING if strings else TensorProto.INT32
    nodes = []
    a, b = "INPUT0", "INPUT1"
    if strings:
        nodes += [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        ]
        a, b = "a", "b"
    out0, out1 = ("s", "d") if strings else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [out0]), helper.make_node("Sub", [a, b], [out1])]
    if strings:
        nodes += [
            helper.make_node("Cast", ["s"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["d"], ["OUTPUT1"], to=TensorProto.STRING),
        ]
    graph = helper.make_graph(
        nodes,
        "simple_string" if strings else "simple",
        [helper.make_tensor_value_info(n, kind, ["N", 16]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, kind, ["N", 16]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_triton_models(root: Path) -> tuple[Path, Path]:
    """Signed packages `simple/1`, `simple_string/1`, `simple_identity/1` under root/models; (models dir, key)."""
    private, public = generate_keypair()
    key = root / "triton-test.pub"
    save_public_key(public, key)
    models = root / "models"
    for name in ("simple", "simple_string", "simple_identity"):
        graph = root / f"{name}.onnx"
        if name == "simple_identity":
            _identity(graph)
        else:
            _add_sub(graph, strings=name == "simple_string")
        inputs, outputs = tensor_specs_from_onnx(graph)
        build_package(
            graph,
            models / name / "1",
            name=name,
            version="1",
            inputs=inputs,
            outputs=outputs,
            max_batch_size=8,
            description=f"Triton example model {name}",
            private_key=private,
        )
    return models, key


@contextmanager
def triton_agent(root: Path, *extra: str) -> Iterator[AgentProcess]:
    """`edge-agent serve --standalone` on the zoo plus Triton's example models, on a free port."""
    models, key = write_triton_models(root)
    args = ["serve", "--standalone", "--port", "0", "--model-dir", str(PACKAGES_DIR), "--model-dir", str(models)]
    process = start_agent([*args, "--trust", str(ZOO_PUBLIC_KEY_FILE), "--trust", str(key), *extra])
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "".join(process.output)
