"""Small ONNX models the tests build on purpose."""

from __future__ import annotations

from pathlib import Path


def broken_onnx(path: Path) -> None:
    """tiny-cnn's I/O (input [-1,3,64,64] -> scores [-1,4]) through a Reshape no batch can satisfy at run time."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "bad_shape"], ["mid"]),
            helper.make_node("Reshape", ["mid", "out_shape"], ["scores"]),
        ],
        "broken",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor("bad_shape", TensorProto.INT64, [2], [-1, 7]),  # 12288 values per row: not / 7
            helper.make_tensor("out_shape", TensorProto.INT64, [2], [-1, 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
