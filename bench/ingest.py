"""Ingest benchmark: simulated devices -> real mosquitto -> (a) a bare paho subscriber, (b) the hub's MQTT link
alone, (c) one hub on SQLite, (d) two hub replicas on PostgreSQL sharing the subscription.

Run: `python -m bench.ingest` (or `python -m bench`). Prints one line:
`ingest: hub/raw=... hub_msgs_per_s=... raw_msgs_per_s=... link/raw=... hub/link=... replicas2/raw=...
replicas2_msgs_per_s=... fleet_per_hub_at_10s=... fleet_per_replica_at_10s=... rounds=N`

How a rate is measured, the same way for every consumer (each in its own process):
1. The consumer connects and subscribes (`$share/edgefleet-hub/.../telemetry`, QoS 1 subscription; the
   publishers send QoS 0), then drains a warm-up of one report per device (imports, caches, the first
   DB transactions), which is not measured.
2. The controller freezes it (SIGSTOP), publishes the measured load (DEVICES x per-device reports, from
   separate publisher processes), lets the broker queue it, notes t0 and thaws it (SIGCONT).
3. rate = measured messages / (last handled - t0). For the hub "handled" means validated, applied to the
   in-memory state and committed to the database (the time of the commit, polled every 5 ms).
So the consumer under test drains a backlog with only the broker beside it: publishers on this 2-core
machine no longer share the CPU with it (when they did, a fast consumer was paced by the publishers and
the ratio flattered a slow one). Rounds alternate raw / link / hub / replicas; the line gives medians and
ratios of medians, stderr every round.

The bench hub writes a devices-row update per report (`load_every_s=0`), as a hub does in production at a
10 s report interval (its 2 s throttle only coalesces reports that come faster); without it, a device
sending 60 reports in a burst would get 1 row update instead of 60.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._pg import PG_URL, pg_database

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "edgefleet/v1"
DEVICES = 1000


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


def role_publish(port: int, first: int, count: int, per_device: int, seq_first: int) -> None:
    """Publish `per_device` reports (seq from `seq_first`) for each of `count` device ids from `first`, QoS 0."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{first}", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    ids = device_ids(first + count)[first:]
    templates = {d: report_template(d).replace("999999999", "{seq}") for d in ids}
    topics = {d: f"{PREFIX}/devices/{d}/telemetry" for d in ids}
    for seq in range(seq_first, seq_first + per_device):
        for d in ids:
            info = client.publish(topics[d], templates[d].replace("{seq}", str(seq)).encode(), qos=0)
            if info.rc != 0:
                raise SystemExit(f"publish failed: {info.rc}")
    while client.want_write():
        time.sleep(0.01)
    time.sleep(0.2)
    client.disconnect()
    client.loop_stop()


SHARED_TELEMETRY = f"$share/edgefleet-hub/{PREFIX}/devices/+/telemetry"


def role_raw(port: int, warm: int, expect: int) -> None:
    """A bare paho v5 subscriber on the same shared subscription: counts messages, nothing else."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"count": 0, "last": 0.0, "cpu": 0.0}

    def on_message(client: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        state["count"] += 1
        if state["count"] == warm:
            state["cpu"] = time.process_time()
            print("warm", flush=True)
        if state["count"] >= expect:
            state["last"], state["cpu"] = time.time(), time.process_time() - state["cpu"]
            client.disconnect()

    def on_connect(client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(SHARED_TELEMETRY, qos=1)

    def on_subscribe(*_a: Any) -> None:
        print("ready", flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.on_message, client.on_connect, client.on_subscribe = on_message, on_connect, on_subscribe
    client.connect("127.0.0.1", port, 60)
    client.loop_forever()
    print(json.dumps(state), flush=True)


async def _role_link(port: int, warm: int, expect: int) -> None:
    """The hub's own MQTT link (cloud_hub.broker) with a handler that only counts: its receive ceiling."""
    from cloud_hub.broker import BrokerLink, BrokerUrl

    state = {"count": 0, "last": 0.0, "cpu": 0.0}
    done = asyncio.Event()

    def on_message(_topic: str, _payload: bytes) -> None:
        state["count"] += 1
        if state["count"] == warm:
            state["cpu"] = time.process_time()
            print("warm", flush=True)
        if state["count"] >= expect and not done.is_set():
            state["last"], state["cpu"] = time.time(), time.process_time() - state["cpu"]
            done.set()

    url = BrokerUrl("127.0.0.1", port, tls=False)
    async with BrokerLink(url, subscriptions=[(SHARED_TELEMETRY, 1)], on_message=on_message) as link:
        await link.wait_connected(10)
        print("ready", flush=True)
        await done.wait()
    print(json.dumps(state), flush=True)


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


async def _role_hub(port: int, data_dir: str, db_url: str, warm: int, expect: int) -> None:
    """One hub replica; `expect` 0 means "until 1 s without new messages" (replicas do not know their share)."""
    import logging

    from cloud_hub.app import Hub
    from cloud_hub.config import HubConfig

    logging.basicConfig(level=logging.WARNING)
    # A clean session per round: the bench publishes at QoS 0 and joins the same $share group with its raw
    # consumer, so a previous round's persistent hub session would take its round-robin share and drop it.
    config = HubConfig(
        data_dir=Path(data_dir),
        database_url=db_url,
        brokers=(f"mqtt://127.0.0.1:{port}",),
        broker_authz="acl",  # a plain broker: no identities, no dynamic-security registry to keep
        mqtt_session_expiry_s=0,
    )
    async with Hub(config) as hub:
        assert hub.ingest is not None
        hub.ingest.writer.load_every_s = 0.0  # one devices-row update per report, as at a 10 s interval
        await hub.ingest.wait_connected(10)
        print("ready", flush=True)
        accepted, rows = hub.metrics.accepted["telemetry"], hub.metrics.db_rows
        warmed, cpu, last_cpu = False, 0.0, 0.0
        last_n, last_rows, last_change, last_commit = 0.0, 0.0, time.time(), 0.0
        now = time.time()
        while True:
            await asyncio.sleep(0.005)
            before, now = now, time.time()
            if now - before > 0.5:
                last_change = now  # we were frozen (SIGSTOP): idle time counts from the thaw
            n, r = accepted._value.get(), rows._value.get()
            if not warmed and n >= warm:
                await hub.ingest.writer.drain()
                warmed, cpu = True, time.process_time()
                print("warm", flush=True)
                continue
            if n != last_n or r != last_rows:
                last_n, last_change = n, now
            if r != last_rows:
                last_rows, last_commit, last_cpu = r, now, time.process_time()
            if (expect and n >= expect) or (not expect and warmed and now - last_change > 1.0):
                break
        await hub.ingest.writer.drain()
        if rows._value.get() != last_rows or expect:
            last_commit, last_cpu = time.time(), time.process_time()
        result = {
            "count": accepted._value.get(),
            "last": last_commit,
            "cpu": last_cpu - cpu,
            "dropped": {r: c._value.get() for r, c in hub.metrics.drops.items() if c._value.get()},
            "rows": rows._value.get(),
        }
    print(json.dumps(result), flush=True)


# --- the controller ------------------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.ingest", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _expect_line(proc: subprocess.Popen[str], want: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != want:
        proc.kill()
        raise SystemExit(f"consumer said {line!r}, expected {want!r}")


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _publish(port: int, per_device: int, seq_first: int, publishers: int) -> None:
    share = DEVICES // publishers
    procs = [_spawn("--role", "pub", "--port", str(port), "--first", str(i * share), "--count", str(share),
                    "--per-device", str(per_device), "--seq-first", str(seq_first))
             for i in range(publishers)]  # fmt: skip
    for p in procs:
        if p.wait(timeout=120) != 0:
            raise SystemExit("a publisher failed")


def _drain(
    port: int, consumers: list[subprocess.Popen[str]], per_device: int, publishers: int, cpu_us: list[float]
) -> float:
    """Warm the consumers up, freeze them, queue the load at the broker, thaw them: the drain rate (msgs/s).

    Appends to `cpu_us` the consumers' CPU time per measured message (all their threads; not the broker's
    nor PostgreSQL's): less disturbed than wall time by other work on a shared machine."""
    for c in consumers:
        _expect_line(c, "ready")
    _publish(port, 1, 1, publishers)
    for c in consumers:
        _expect_line(c, "warm")
    time.sleep(0.5)  # replicas: their last warm-up messages and writes
    for c in consumers:
        os.kill(c.pid, signal.SIGSTOP)
    try:
        _publish(port, per_device, 2, publishers)
        time.sleep(0.5)  # the broker routes the tail of it into the consumers' queues
    finally:
        t0 = time.time()
        for c in consumers:
            os.kill(c.pid, signal.SIGCONT)
    results = [_result(c, timeout=300) for c in consumers]
    measured = sum(r["count"] for r in results) - DEVICES
    cpu_us.append(1e6 * sum(r["cpu"] for r in results) / measured)
    expect = DEVICES * per_device
    if measured < expect:
        print(f"# {measured}/{expect} messages arrived (broker dropped the rest)", file=sys.stderr)
    for r in results:
        if r.get("dropped"):
            print(f"# dropped {r['dropped']}", file=sys.stderr)
    if len(results) > 1:
        print(f"# replicas split: {[r['count'] for r in results]}", file=sys.stderr)
    return measured / (max(r["last"] for r in results) - t0)


def main_controller(per_device: int, publishers: int, rounds: int, replicas: bool) -> str:
    from sqlalchemy.engine import make_url

    from deploy.local.broker import Mosquitto

    port_args = ["--warm", str(DEVICES), "--expect", str(DEVICES * (per_device + 1))]
    rates: dict[str, list[float]] = {"raw": [], "link": [], "hub": [], "replicas2": []}
    cpu: dict[str, list[float]] = {k: [] for k in rates}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
        broker = Mosquitto(
            "plain", Path(tmp) / "broker", verbose_log=False,
            extra_config=["max_queued_messages 0", "max_queued_bytes 0"],
        )  # fmt: skip
        with broker:
            port = ["--port", str(broker.port)]
            for i in range(rounds):
                for role in ("raw", "link"):
                    consumer = _spawn("--role", role, *port, *port_args)
                    rates[role].append(_drain(broker.port, [consumer], per_device, publishers, cpu[role]))
                sqlite_url = f"sqlite:///{tmp}/hub{i}.db"
                asyncio.run(_prepare_db(sqlite_url, DEVICES))
                hub = _spawn("--role", "hub", *port, "--data-dir", f"{tmp}/hub", "--db", sqlite_url, *port_args)
                rates["hub"].append(_drain(broker.port, [hub], per_device, publishers, cpu["hub"]))
                if replicas:
                    pg_name = f"edgefleet_bench_{os.getpid()}_{i}"
                    pg_database("create", pg_name)
                    try:
                        pg_url = make_url(PG_URL).set(database=pg_name).render_as_string(hide_password=False)
                        asyncio.run(_prepare_db(pg_url, DEVICES))
                        procs = [_spawn("--role", "hub", *port, "--data-dir", f"{tmp}/hub", "--db", pg_url,
                                        "--warm", "1", "--expect", "0") for _ in range(2)]  # fmt: skip
                        rates["replicas2"].append(_drain(broker.port, procs, per_device, publishers, cpu["replicas2"]))
                    finally:
                        pg_database("drop", pg_name)
                shown = " ".join(f"{k}={v[-1]:.0f}" for k, v in rates.items() if v)
                shown_cpu = " ".join(f"{k}={v[-1]:.1f}" for k, v in cpu.items() if v)
                print(f"# round {i + 1}: msgs/s {shown}; cpu us/msg {shown_cpu}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items() if v}
    spread = {k: f"{min(v):.0f}-{max(v):.0f}" for k, v in rates.items() if v}
    print(f"# ranges msgs/s: {spread}", file=sys.stderr)
    print(f"# median consumer cpu us/msg: { {k: round(v, 1) for k, v in med_cpu.items()} }", file=sys.stderr)
    raw, hub = med["raw"], med["hub"]
    line = (
        f"ingest: hub/raw={hub / raw:.2f} hub_msgs_per_s={hub:.0f} raw_msgs_per_s={raw:.0f} "
        f"link/raw={med['link'] / raw:.2f} hub/link={hub / med['link']:.2f} "
        f"cpu_us_per_msg_raw={med_cpu['raw']:.1f} cpu_us_per_msg_hub={med_cpu['hub']:.1f}"
    )
    if "replicas2" in med:
        rep = med["replicas2"]
        line += f" replicas2/raw={rep / raw:.2f} replicas2_msgs_per_s={rep:.0f}"
    line += f" fleet_per_hub_at_10s={hub * 10:.0f}"
    if "replicas2" in med:
        line += f" fleet_per_replica_at_10s={med['replicas2'] / 2 * 10:.0f}"
    return line + f" rounds={rounds}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ingest")
    parser.add_argument("--role", choices=["controller", "pub", "raw", "link", "hub"], default="controller")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--per-device", type=int, default=int(os.environ.get("BENCH_INGEST_PER_DEVICE", "60")))
    parser.add_argument("--seq-first", type=int, default=1)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_INGEST_ROUNDS", "3")))
    parser.add_argument("--no-replicas", action="store_true", help="skip the PostgreSQL replicas")
    parser.add_argument("--warm", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--db", default="")
    args = parser.parse_args(argv)
    if args.role == "pub":
        role_publish(args.port, args.first, args.count, args.per_device, args.seq_first)
    elif args.role == "raw":
        role_raw(args.port, args.warm, args.expect)
    elif args.role == "link":
        asyncio.run(_role_link(args.port, args.warm, args.expect))
    elif args.role == "hub":
        run = "asyncio.run(_role_hub(args.port, args.data_dir, args.db, args.warm, args.expect))"
        if os.environ.get("BENCH_INGEST_PROFILE"):
            import cProfile

            cProfile.runctx(
                run, globals(), {"args": args, "asyncio": asyncio, "_role_hub": _role_hub},
                os.environ["BENCH_INGEST_PROFILE"] + f".{os.getpid()}",
            )  # fmt: skip
        else:
            asyncio.run(_role_hub(args.port, args.data_dir, args.db, args.warm, args.expect))
    else:
        print(main_controller(args.per_device, args.publishers, args.rounds, not args.no_replicas), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
