"""A minimal aiohttp V2 infer handler with no scheduler: the baseline bench/serving.py compares the agent to.

It decodes the same bodies with protocols.binary, runs onnxruntime inline, and encodes the response.
Usage: python -m bench._bare_v2 PORT INTRA_OP_THREADS PACKAGE_DIR...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
from aiohttp import web

from models.package import open_package
from protocols.binary import HEADER_LENGTH, decode_request, encode_response


def main() -> None:
    """Serve POST /v2/models/{model}/infer for the given packages."""
    port, threads = int(sys.argv[1]), int(sys.argv[2])
    sessions: dict[str, tuple[Any, str]] = {}
    for arg in sys.argv[3:]:
        pkg = open_package(Path(arg))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(pkg.model_path), so, providers=["CPUExecutionProvider"])
        sessions[pkg.manifest.name] = (session, pkg.manifest.version)

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        session, version = sessions[name]
        header = request.headers.get(HEADER_LENGTH)
        decoded = decode_request(await request.read(), None if header is None else int(header))
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, decoded.inputs), strict=True))
        body, length = encode_response(
            model_name=name, model_version=version, id=decoded.id, outputs=outputs, binary=decoded.binary_output
        )
        if length is None:
            return web.Response(body=body, content_type="application/json")
        return web.Response(body=body, headers={HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{model}/infer", infer)
    print(f"bare ready on http://127.0.0.1:{port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
