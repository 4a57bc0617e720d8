"""Run KServe's own Python SDK (`kserve.InferenceRESTClient`, V2 protocol) against an agent.

Executed by tests/edge_agent/test_kserve_sdk.py with the interpreter of `.venv-kserve` (kserve pinned there by
the Makefile; it is not in the project's venv: it would pull ~30 packages and downgrade protobuf). Usage:
`client.py URL MODEL INPUT_NAME INPUT.npy OUT_DIR`: writes `result.json` (health answers, ids, output names)
and one `<output>-<json|binary>.npy` per output and encoding.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str, input_name: str, array_path: str, out_dir: str) -> None:
    array = np.load(array_path)
    out = Path(out_dir)
    result: dict[str, object] = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        result["server_live"] = await client.is_server_live(url)
        result["server_ready"] = await client.is_server_ready(url)
        result["model_ready"] = await client.is_model_ready(url, model)
        for encoding in ("json", "binary"):
            tensor = InferInput(name=input_name, shape=list(array.shape), datatype="FP32")
            tensor.set_data_from_numpy(array, binary_data=encoding == "binary")
            request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"kserve-{encoding}")
            response = await client.infer(url, request, model_name=model)
            result[f"{encoding}_id"] = response.id
            result[f"{encoding}_model"] = response.model_name
            result[f"{encoding}_outputs"] = [o.name for o in response.outputs]
            for output in response.outputs:
                np.save(out / f"{output.name}-{encoding}.npy", output.as_numpy())
        try:
            await client.infer(url, {"inputs": []}, model_name="no-such-model")
        except Exception as exc:  # the SDK raises httpx.HTTPStatusError with the server's error text
            result["unknown_model_error"] = str(exc)
    finally:
        await client.close()
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
