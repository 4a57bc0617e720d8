"""Rollout benchmark: N simulated agents converge to a new 20 MB model version through the real hub, against
the raw time of the same N downloads of the same file from the same hub with no orchestration.

Run: `python -m bench.rollout [--agents N] [--concurrency C]` (or `python -m bench`). Prints one line:
`rollout: agents=N converge_s=... raw_transfer_s=... converge/raw=...`

Set-up (each part its own process): a plain mosquitto (no TLS on MQTT: 1,000 mTLS connections with ACLs
would measure the broker's handshakes, not the rollout); the hub (`serve_hub`: HTTPS listener with the
optional client certificate, ingest, orchestrator, SQLite); N device rows in its database; one package of
20 MB pushed through the API. The agents are a lightweight reconciler in one asyncio process: a few paho
connections (100 agents each) subscribe to each agent's own `devices/{id}/desired` topic; on a new revision
the agent downloads the artifact over HTTPS with a device certificate issued by the hub CA, checks size and
sha256 while streaming, and publishes a retained ReportedState `active`. All agents share ONE device
certificate (CN = the first device id): the hub checks it per request exactly as for N certificates, and the
bench does not spend its time on N TLS contexts.

raw_transfer_s: N downloads of the same artifact, same client code, same connection limit (`--concurrency`),
no MQTT, no hub orchestration. converge_s: from POST /api/v1/rollouts (canary 0, one wave of 100 %, no bake)
to the rollout's state `completed` as the API reports it (polled every 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "edgefleet/v1"
PACKAGE_MB = 20
CHUNK = 1 << 20
PER_CONNECTION = 100


def device_ids(n: int) -> list[str]:
    return [f"sim-{i:05d}" for i in range(n)]


# --- download (shared by both measurements) ------------------------------------------------------------------


def _ssl(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


async def download(session: Any, url: str, ctx: ssl.SSLContext, sha256: str, size: int) -> None:
    """Stream the artifact, hashing as it comes; raise if size or sha256 differ."""
    digest = hashlib.sha256()
    got = 0
    async with session.get(url, ssl=ctx) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {await resp.text()}")
        async for chunk in resp.content.iter_chunked(CHUNK):
            digest.update(chunk)
            got += len(chunk)
    if got != size or digest.hexdigest() != sha256:
        raise RuntimeError(f"artifact mismatch: {got} bytes, sha256 {digest.hexdigest()}")


def _session(concurrency: int) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=600)
    )


async def _role_raw(args: argparse.Namespace) -> None:
    ctx = _ssl(args.ca, args.cert, args.key)
    async with _session(args.concurrency) as session:
        await download(session, args.url, ctx, args.sha256, args.size)  # warm: connection pool, page cache
        t0 = time.monotonic()
        await asyncio.gather(*(download(session, args.url, ctx, args.sha256, args.size) for _ in range(args.agents)))
        took = time.monotonic() - t0
    print(json.dumps({"raw_s": took}), flush=True)


# --- the simulated agents ----------------------------------------------------------------------------------


async def _role_agents(args: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from protocols.messages import DesiredState, ModelReport, ReportedState

    loop = asyncio.get_running_loop()
    ctx = _ssl(args.ca, args.cert, args.key)
    ids = device_ids(args.agents)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    clients: dict[str, mqtt.Client] = {}
    subscribed = threading.Semaphore(0)
    connections = []
    for start in range(0, len(ids), PER_CONNECTION):
        group = ids[start : start + PER_CONNECTION]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-agents-{start}", protocol=mqtt.MQTTv5)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any, group: list[str] = group) -> None:
            c.subscribe([(f"{PREFIX}/devices/{d}/desired", 1) for d in group])

        client.on_connect = on_connect
        client.on_subscribe = lambda *_a: subscribed.release()
        client.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(queue.put_nowait, (m.topic, m.payload))
        client.connect("127.0.0.1", args.port, 60)
        client.loop_start()
        connections.append(client)
        for d in group:
            clients[d] = client
    for _ in connections:
        if not await asyncio.to_thread(subscribed.acquire, True, 30):
            raise RuntimeError("agents did not subscribe")
    print("ready", flush=True)

    revisions: dict[str, int] = {}
    done: set[str] = set()
    all_done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def reconcile(session: Any, state: DesiredState) -> None:
        reports = []
        for m in state.models:
            await download(session, m.url, ctx, m.sha256, m.size)
            reports.append(ModelReport(name=m.name, version=m.version, state="active", active_version=m.version))
        reported = ReportedState(device_id=state.device_id, revision=state.revision, updated_at=time.time(),
                                 models=tuple(reports), converged=True)  # fmt: skip
        topic = f"{PREFIX}/devices/{state.device_id}/reported"
        clients[state.device_id].publish(topic, reported.model_dump_json(), qos=1, retain=True)
        done.add(state.device_id)
        if len(done) == len(ids):
            all_done.set()

    async with _session(args.concurrency) as session:
        waiter = asyncio.create_task(all_done.wait())
        while not all_done.is_set():
            getter = asyncio.create_task(queue.get())
            finished, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in finished:
                getter.cancel()
                break
            _topic, payload = getter.result()
            state = DesiredState.model_validate_json(payload)
            if state.revision <= revisions.get(state.device_id, 0):
                continue  # a revision it already has (retained or republished)
            revisions[state.device_id] = state.revision
            task = asyncio.create_task(reconcile(session, state))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)  # let the last PUBACKs out
    for client in connections:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"active": len(done)}), flush=True)


# --- the hub ---------------------------------------------------------------------------------------------------


async def _prepare(data_dir: Path, db_url: str, n: int) -> None:
    from cloud_hub.pki import HubIdentity
    from cloud_hub.store import Store, schema

    identity = HubIdentity.bootstrap(data_dir, ("localhost", "127.0.0.1"))
    identity.issue_keypair(device_ids(1)[0], data_dir / "device.pem", data_dir / "device.key", server=False)
    now = time.time()
    rows = [
        {"id": d, "labels": {"bench": "rollout"}, "hardware": None, "claim_id": "bench", "cert_serial": "1",
         "cert_fingerprint": "0" * 64, "cert_not_after": now + 1e6, "status": "active", "online": True,
         "created_at": now, "provisioned_at": now}
        for d in device_ids(n)
    ]  # fmt: skip
    async with Store(db_url) as store, store.begin() as conn:
        await conn.execute(schema.devices.insert(), rows)


async def _role_hub(args: argparse.Namespace) -> None:
    import logging

    from cloud_hub.app import serve_hub
    from cloud_hub.config import HubConfig

    logging.basicConfig(level=logging.WARNING)
    config = HubConfig(
        data_dir=Path(args.data_dir), database_url=args.db, port=args.http_port,
        brokers=(f"mqtt://127.0.0.1:{args.port}",), batch_max_delay_ms=50,
        broker_authz="acl",  # a plain broker: no identities, no dynamic-security registry to keep
    )  # fmt: skip
    async with serve_hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the controller closes our stdin


# --- the controller ------------------------------------------------------------------------------------------


def _spawn(*args: str, stdin: Any = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.rollout", *args], cwd=ROOT, stdout=subprocess.PIPE, stdin=stdin, text=True
    )


def _line(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line or time.monotonic() > deadline:
        raise RuntimeError(f"process {proc.args} ended without output (exit {proc.poll()})")
    return line.strip()


def _package(tmp: Path) -> Path:
    from models.package import build_package, pack_tar
    from protocols.manifest import TensorSpec

    blob = tmp / "weights.onnx"
    blob.write_bytes(os.urandom(PACKAGE_MB << 20))
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    pkg = build_package(blob, tmp / "pkg", name="bench-model", version="2", inputs=[spec],
                        outputs=[spec.model_copy(update={"name": "y"})], max_batch_size=8)  # fmt: skip
    return pack_tar(pkg.path, tmp / "bench-model-2.tar")


def main_controller(agents: int, concurrency: int) -> str:
    from cloud_hub.cli.client import HubClient
    from cloud_hub.cli.models import upload
    from deploy.local.broker import Mosquitto
    from deploy.local.procs import free_port

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-rollout-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "hub"
        db_url = f"sqlite:///{tmp}/hub.db"
        asyncio.run(_prepare(data_dir, db_url, agents))
        unbounded = ["max_queued_messages 0", "max_queued_bytes 0", "max_inflight_messages 0"]
        broker = Mosquitto("plain", tmp / "broker", verbose_log=False, extra_config=unbounded)
        with broker:
            http_port = free_port()
            hub = _spawn("--role", "hub", "--port", str(broker.port), "--http-port", str(http_port),
                         "--data-dir", str(data_dir), "--db", db_url, stdin=subprocess.PIPE)  # fmt: skip
            try:
                if _line(hub) != "ready":
                    raise RuntimeError("hub did not start")
                token = (data_dir / "operator-token").read_text().strip()
                ca = str(data_dir / "pki" / "ca.pem")
                client = HubClient(f"https://127.0.0.1:{http_port}", token, ssl.create_default_context(cafile=ca))
                model = upload(client, _package(tmp), allow_unsigned=True)["model"]
                url = f"{client.url}/api/v1/artifacts/{model['sha256']}.tar"
                tls = ["--ca", ca, "--cert", str(data_dir / "device.pem"), "--key", str(data_dir / "device.key")]
                common = ["--agents", str(agents), "--concurrency", str(concurrency), *tls]

                raw_proc = _spawn("--role", "raw", *common, "--url", url, "--sha256", model["sha256"],
                                  "--size", str(model["size"]))  # fmt: skip
                raw_s = json.loads(_line(raw_proc, 600))["raw_s"]
                raw_proc.wait(30)
                print(f"raw: {agents} downloads of {model['size'] / 1e6:.1f} MB in {raw_s:.2f} s", file=sys.stderr)

                agent_proc = _spawn("--role", "agents", "--port", str(broker.port), *common)
                if _line(agent_proc) != "ready":
                    raise RuntimeError("agents did not start")
                body = {"model": "bench-model", "version": "2", "selector": {"bench": "rollout"}, "canary": 0,
                        "waves_pct": [100], "bake_s": 0}  # fmt: skip
                t0 = time.monotonic()
                rollout_id = client.request("POST", "/api/v1/rollouts", body)["rollout"]["id"]
                while True:
                    time.sleep(0.5)
                    listed = client.request("GET", "/api/v1/rollouts")["rollouts"]
                    state = next(r for r in listed if r["id"] == rollout_id)
                    if state["state"] in ("completed", "rolled_back", "aborted", "completed_with_pending"):
                        break
                    if time.monotonic() - t0 > 600:
                        raise RuntimeError(f"rollout did not converge: {state}")
                converge_s = time.monotonic() - t0
                if state["state"] != "completed":
                    raise RuntimeError(f"rollout ended {state['state']}: {state}")
                print(f"agents: {_line(agent_proc, 60)}", file=sys.stderr)
                agent_proc.wait(30)
            finally:
                if hub.stdin is not None:
                    hub.stdin.close()
                try:
                    hub.wait(30)
                except subprocess.TimeoutExpired:
                    hub.kill()
    ratio = converge_s / raw_s
    return f"rollout: agents={agents} converge_s={converge_s:.2f} raw_transfer_s={raw_s:.2f} converge/raw={ratio:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("controller", "hub", "agents", "raw"), default="controller")
    parser.add_argument("--agents", type=int, default=int(os.environ.get("EDGEFLEET_BENCH_AGENTS", "1000")))
    parser.add_argument("--concurrency", type=int, default=100, help="connections downloading at once")
    parser.add_argument("--port", type=int, help="broker port")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--db")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--url")
    parser.add_argument("--sha256")
    parser.add_argument("--size", type=int)
    args = parser.parse_args(argv)
    if args.role == "hub":
        asyncio.run(_role_hub(args))
    elif args.role == "agents":
        asyncio.run(_role_agents(args))
    elif args.role == "raw":
        asyncio.run(_role_raw(args))
    else:
        print(main_controller(args.agents, args.concurrency), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
