"""Ingest benchmark: simulated devices -> real mosquitto -> (a) bare paho subscriber, (b) one hub on SQLite,
(c) two hub replicas on PostgreSQL sharing the subscription.

Run: `python -m bench.ingest` (or `python -m bench`). Prints one line:
`ingest: hub/raw=... hub_msgs_per_s=... raw_msgs_per_s=... replicas2/raw=... replicas2_msgs_per_s=...
fleet_per_replica_at_10s=...`

Publishers are separate processes (a few paho clients publishing on behalf of many device ids, QoS 0, as
fast as they can) so the consumer under test is the bottleneck; the broker is the rig's plain flavour
(the mTLS ACL would confine each client to one device id). Each consumer runs in its own process and
reports wall-clock times; a rate is messages / (last one handled - first one received). For the hub,
"handled" means validated, applied to the in-memory state, and committed to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "edgefleet/v1"
DEVICES = 1000
PG_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def device_ids(n: int) -> list[str]:
    return [f"sim-{i:05d}" for i in range(n)]


def report_template(device_id: str) -> str:
    from protocols.messages import DeviceLoad, LoadReport, PipelineLoad, RouteCounts

    report = LoadReport(
        device_id=device_id,
        boot_id="bench-boot",
        seq=999_999_999,
        sent_at=time.time(),
        interval_s=10.0,
        pipelines=(
            PipelineLoad(
                name="detect",
                model="tiny-cnn",
                version="2",
                priority="standard",
                requests_per_s=12.0,
                routes=RouteCounts(local=110, cloud=10),
                p50_ms=4.2,
                p99_ms=18.5,
                queue_depth=1,
            ),
        ),
        device=DeviceLoad(cpu_percent=35.0, ram_used_mb=1500, ram_total_mb=8192, gpu_source="unavailable"),
    )
    return report.model_dump_json()


# --- roles (each runs in its own process) ------------------------------------------------------------------


def role_publish(port: int, first: int, count: int, per_device: int) -> None:
    """Publish `per_device` reports for each of `count` device ids starting at `first`, QoS 0, flat out."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{first}", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    ids = device_ids(first + count)[first:]
    templates = {d: report_template(d).replace("999999999", "{seq}") for d in ids}
    topics = {d: f"{PREFIX}/devices/{d}/telemetry" for d in ids}
    for seq in range(1, per_device + 1):
        for d in ids:
            info = client.publish(topics[d], templates[d].replace("{seq}", str(seq)).encode(), qos=0)
            if info.rc != 0:
                raise SystemExit(f"publish failed: {info.rc}")
    while client.want_write():
        time.sleep(0.01)
    time.sleep(0.2)
    client.disconnect()
    client.loop_stop()


def role_raw(port: int, expect: int) -> None:
    """A bare paho v5 subscriber on the same shared subscription: counts messages, nothing else."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(client: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        if state["n"] == 0:
            state["first"] = time.time()
        state["n"] += 1
        if state["n"] >= expect:
            state["last"] = time.time()
            client.disconnect()

    def on_connect(client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(f"$share/edgefleet-hub/{PREFIX}/devices/+/telemetry", qos=1)

    def on_subscribe(*_a: Any) -> None:
        print("ready", flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.on_message, client.on_connect, client.on_subscribe = on_message, on_connect, on_subscribe
    client.connect("127.0.0.1", port, 60)
    client.loop_forever()
    print(json.dumps({"count": state["n"], "first": state["first"], "last": state["last"]}), flush=True)


async def _prepare_db(url: str, n: int) -> None:
    from cloud_hub.store import Store, schema

    now = time.time()
    rows = [
        {"id": d, "labels": {"bench": "1"}, "hardware": None, "claim_id": "bench", "cert_serial": "1",
         "cert_fingerprint": "0" * 64, "cert_not_after": now + 1e6, "status": "active", "online": True,
         "created_at": now, "provisioned_at": now}
        for d in device_ids(n)
    ]  # fmt: skip
    async with Store(url) as store, store.begin() as conn:
        await conn.execute(schema.devices.insert(), rows)


async def _role_hub(port: int, data_dir: str, db_url: str, expect: int, idle_s: float) -> None:
    import logging

    from cloud_hub.config import HubConfig
    from cloud_hub.hub import Hub

    logging.basicConfig(level=logging.WARNING)
    config = HubConfig(data_dir=Path(data_dir), database_url=db_url, brokers=(f"mqtt://127.0.0.1:{port}",))
    async with Hub(config) as hub:
        assert hub.ingest is not None
        await hub.ingest.wait_connected(10)
        print("ready", flush=True)
        accepted = hub.metrics.accepted["telemetry"]
        first = 0.0
        last_change, last_n = time.time(), 0.0
        while True:
            await asyncio.sleep(0.02)
            n = accepted._value.get()
            if n and not first:
                first = time.time()  # within 20 ms of the first message
            if n != last_n:
                last_change, last_n = time.time(), n
            if (expect and n >= expect) or (n and time.time() - last_change > idle_s):
                break
        await hub.ingest.writer.drain()
        done = time.time()
        result = {
            "count": n,
            "first": first,
            "last": done,
            "dropped": {r: c._value.get() for r, c in hub.metrics.drops.items() if c._value.get()},
            "rows": hub.metrics.db_rows._value.get(),
        }
    print(json.dumps(result), flush=True)


# --- the controller ------------------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.ingest", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise SystemExit(f"consumer did not start: {line!r}")


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _publish(port: int, per_device: int, publishers: int) -> None:
    share = DEVICES // publishers
    procs = [_spawn("--role", "pub", "--port", str(port), "--first", str(i * share), "--count", str(share),
                    "--per-device", str(per_device)) for i in range(publishers)]  # fmt: skip
    for p in procs:
        if p.wait(timeout=120) != 0:
            raise SystemExit("a publisher failed")


def _phase(port: int, consumers: list[subprocess.Popen[str]], per_device: int, publishers: int) -> list[dict[str, Any]]:
    for c in consumers:
        _wait_ready(c)
    _publish(port, per_device, publishers)
    return [_result(c, timeout=120) for c in consumers]


def _rate(results: list[dict[str, Any]]) -> float:
    count = sum(r["count"] for r in results)
    return count / (max(r["last"] for r in results) - min(r["first"] for r in results))


def _pg_database(action: str, name: str) -> None:
    async def run() -> None:
        import asyncpg
        from sqlalchemy.engine import make_url

        dsn = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            sql = (
                f'CREATE DATABASE "{name}"' if action == "create" else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def main_controller(per_device: int, publishers: int) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from rig import Mosquitto
    from sqlalchemy.engine import make_url

    expect = DEVICES * per_device
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
        broker = Mosquitto(
            "plain", Path(tmp) / "broker", verbose_log=False,
            extra_config=["max_queued_messages 0", "max_queued_bytes 0"],
        )  # fmt: skip
        with broker:
            raw = _phase(broker.port, [_spawn("--role", "raw", "--port", str(broker.port), "--expect", str(expect))],
                         per_device, publishers)  # fmt: skip
            sqlite_url = f"sqlite:///{tmp}/hub.db"
            asyncio.run(_prepare_db(sqlite_url, DEVICES))
            single = _spawn("--role", "hub", "--port", str(broker.port), "--data-dir", f"{tmp}/hub",
                            "--db", sqlite_url, "--expect", str(expect))  # fmt: skip
            hub = _phase(broker.port, [single], per_device, publishers)
            pg_name = f"edgefleet_bench_{os.getpid()}"
            _pg_database("create", pg_name)
            try:
                pg_url = make_url(PG_URL).set(database=pg_name).render_as_string(hide_password=False)
                asyncio.run(_prepare_db(pg_url, DEVICES))
                replicas = [_spawn("--role", "hub", "--port", str(broker.port), "--data-dir", f"{tmp}/hub",
                                   "--db", pg_url, "--expect", "0") for _ in range(2)]  # fmt: skip
                reps = _phase(broker.port, replicas, per_device, publishers)
            finally:
                _pg_database("drop", pg_name)
    raw_rate, hub_rate, rep_rate = _rate(raw), _rate(hub), _rate(reps)
    for name, res in (("raw", raw), ("hub", hub), ("replicas", reps)):
        got = sum(r["count"] for r in res)
        if got < expect:
            print(f"# {name}: {got}/{expect} messages arrived (broker dropped the rest)", file=sys.stderr)
        for r in res:
            if r.get("dropped"):
                print(f"# {name}: dropped {r['dropped']}", file=sys.stderr)
    print(f"# replicas split: {[r['count'] for r in reps]}", file=sys.stderr)
    return (
        f"ingest: hub/raw={hub_rate / raw_rate:.2f} hub_msgs_per_s={hub_rate:.0f} raw_msgs_per_s={raw_rate:.0f} "
        f"replicas2/raw={rep_rate / raw_rate:.2f} replicas2_msgs_per_s={rep_rate:.0f} "
        f"fleet_per_replica_at_10s={hub_rate * 10:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ingest")
    parser.add_argument("--role", choices=["controller", "pub", "raw", "hub"], default="controller")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--per-device", type=int, default=int(os.environ.get("BENCH_INGEST_PER_DEVICE", "60")))
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--db", default="")
    args = parser.parse_args(argv)
    if args.role == "pub":
        role_publish(args.port, args.first, args.count, args.per_device)
    elif args.role == "raw":
        role_raw(args.port, args.expect)
    elif args.role == "hub":
        if os.environ.get("BENCH_INGEST_PROFILE"):
            import cProfile

            cProfile.runctx(
                "asyncio.run(_role_hub(args.port, args.data_dir, args.db, args.expect, idle_s=2.0))",
                globals(), {"args": args, "asyncio": asyncio, "_role_hub": _role_hub},
                os.environ["BENCH_INGEST_PROFILE"] + f".{os.getpid()}",
            )  # fmt: skip
        else:
            asyncio.run(_role_hub(args.port, args.data_dir, args.db, args.expect, idle_s=2.0))
    else:
        print(main_controller(args.per_device, args.publishers), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
