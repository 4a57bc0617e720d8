"""A cloud pool whose failure mode is switched at run time: the fault boundary of the pool tests.

Run as a child process: `python tests/faults/pool_support.py PORT`. It speaks the V2 subset the agent's
PoolClient uses (binary tensor extension, `/v2/models/{m}/versions/{v}/infer`, `/v2/health/ready`) and answers
with onnxruntime on the zoo's tiny-cnn files, so a healthy pool gives exactly the right answer.
`POST /control/{mode}` switches: `ok`, `error` (every request 500), `hang` (accepts, never answers).
Killing the process is the fourth fault (the pool vanishes).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
from aiohttp import web

from protocols.binary import HEADER_LENGTH, decode_request, encode_response

ZOO_CNN = Path(__file__).resolve().parents[2] / "models" / "zoo" / "packages" / "tiny-cnn"
MODE = web.AppKey("mode", list[str])
SESSIONS = web.AppKey("sessions", dict[str, Any])


async def _fault(request: web.Request) -> web.StreamResponse | None:
    mode = request.app[MODE][0]
    if mode == "error":
        return web.json_response({"error": "injected pool failure"}, status=500)
    if mode == "hang":
        await asyncio.Event().wait()  # until the client gives up and the connection is dropped
    return None


async def infer(request: web.Request) -> web.StreamResponse:
    """V2 infer on the zoo version named in the path."""
    fault = await _fault(request)
    if fault is not None:
        return fault
    version = request.match_info["version"]
    session = request.app[SESSIONS].get(version)
    if session is None:
        return web.json_response({"error": f"unknown version {version}"}, status=404)
    header = request.headers.get(HEADER_LENGTH)
    decoded = decode_request(await request.read(), None if header is None else int(header))
    batch = decoded.inputs["input"]
    scores = await asyncio.to_thread(session.run, None, {"input": batch})
    body, length = encode_response(
        model_name=request.match_info["model"],
        model_version=version,
        id=decoded.id,
        outputs={"scores": scores[0]},
        binary=True,
    )
    headers = {"Content-Type": "application/octet-stream"}
    if length is not None:
        headers[HEADER_LENGTH] = str(length)
    return web.Response(body=body, headers=headers)


async def ready(request: web.Request) -> web.StreamResponse:
    """Health: 200 when ok, the fault otherwise."""
    fault = await _fault(request)
    return fault if fault is not None else web.json_response({})


async def control(request: web.Request) -> web.StreamResponse:
    """Switch the failure mode."""
    mode = request.match_info["mode"]
    if mode not in ("ok", "error", "hang"):
        return web.json_response({"error": mode}, status=400)
    request.app[MODE][0] = mode
    print(f"fault-pool mode {mode}", flush=True)
    return web.json_response({"mode": mode})


def main(port: int) -> None:
    """Serve on 127.0.0.1:`port`."""
    app = web.Application(client_max_size=64 << 20)
    app[MODE] = ["ok"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    app[SESSIONS] = {
        v: ort.InferenceSession(str(ZOO_CNN / v / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        for v in ("1", "2")
    }
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/control/{mode}", control)
    print(f"fault-pool ready on http://127.0.0.1:{port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
