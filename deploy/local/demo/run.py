"""Run the demo: workdir, signals, the live view, the summary, --keep-running; children always stopped."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from deploy.local.demo import fleet
from deploy.local.demo.scenario import FULL, SHORT, Demo, cancel_and_wait
from deploy.local.demo.state import DemoState
from deploy.local.demo.traffic import Traffic
from deploy.local.demo.view import announce_line, live_view, summary_view
from deploy.local.procs import StackError, Supervisor


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo: 0 when every check that ran passed, 1 otherwise, 130 if interrupted."""
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir: Path = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    return asyncio.run(_main(args, workdir))


async def _main(args: argparse.Namespace, workdir: Path) -> int:
    started = time.monotonic()
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 132))  # logs and CI: room for the tables
    sup = Supervisor(workdir)
    live = not args.no_live and console.is_terminal
    state = DemoState()
    if not live:
        state.announce = lambda step: print(announce_line(step), flush=True)
    demo = Demo(workdir, sup, state, SHORT if args.short else FULL)
    interrupted = _on_signals(asyncio.current_task())
    print(f"edgefleet demo in {workdir} (logs in {workdir / 'logs'}); Ctrl-C stops everything", flush=True)
    code = 1
    summary: dict[str, Any] | None = None
    try:
        await _scenario(demo, state, console if live else None)
        summary = demo.summary(started, interrupted=False)
        try:
            console.print(summary_view(summary, demo.traffic, state))
        except Exception as exc:  # the tables read hub JSON: fall back to the JSON itself
            print(f"(summary table: {type(exc).__name__}: {exc})\n{json.dumps(summary, indent=2, default=str)}")
        code = 0 if summary["ok"] else 1
        if args.keep_running:
            _write(args.summary_json, {**summary, "exit_code": code})
            print(how_to_poke(demo), flush=True)
            await asyncio.Event().wait()  # until Ctrl-C / SIGTERM
    except asyncio.CancelledError:
        if not interrupted:
            raise
        if summary is None:
            code = 130
        print(f"\ninterrupted: stopping {sum(c.alive for c in sup.children)} processes", file=sys.stderr, flush=True)
    except StackError as exc:
        state.step(state.steps[-1].name if state.steps else "start", "failed", str(exc))
        print(f"edgefleet demo: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        _ignore_signals()  # a second Ctrl-C must not cut the clean-up short
        sup.stop_all()
        if summary is None:
            summary = demo.summary(started, interrupted=bool(interrupted))
        _write(args.summary_json, {**summary, "exit_code": code, "interrupted": bool(interrupted)})
    return code


async def _scenario(demo: Demo, state: DemoState, live_console: Console | None) -> None:
    """Start-up, then traffic with the rollout and the burst, under the live view if there is one."""
    view: AbstractContextManager[Any] = (
        Live(get_renderable=lambda: live_view(state, demo.traffic), console=live_console, refresh_per_second=4)
        if live_console is not None
        else nullcontext()
    )
    with view:
        await demo.start()
        watcher = asyncio.create_task(demo.watch())
        try:
            async with Traffic([t for t, _ in demo.targets()]) as traffic:
                demo.traffic = traffic
                await demo.traffic_phases(traffic)
        finally:
            await cancel_and_wait(watcher)
        await demo.poll()


class _Flag:
    """Truthy once a signal arrived."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


def _on_signals(task: asyncio.Task[Any] | None) -> _Flag:
    """SIGINT/SIGTERM cancel the demo's main task (its `finally` stops the children)."""
    flag = _Flag()
    loop = asyncio.get_running_loop()

    def handler() -> None:
        flag.set = True
        if task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
    return flag


def _ignore_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None)


def _write(path: Path | None, summary: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(path)


def how_to_poke(demo: Demo) -> str:
    """What to run against the system left up by --keep-running."""
    device = fleet.BURST_DEVICE
    url = demo.agent_urls[device]
    body = demo.workdir / "request.json"
    body.write_text(
        json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.0] * 12288}]})
    )
    return f"""
The demo keeps running; Ctrl-C stops every process. Try:

  # {device}'s best-effort pipeline, V2 JSON body (the X-Edgefleet-Route header says where it ran)
  curl -si {url}/v2/models/shelf/infer -H 'Content-Type: application/json' -d @{body}

  # its safety pipeline with tritonclient (pip install 'tritonclient[http]')
  import numpy as np, tritonclient.http as http
  client = http.InferenceServerClient("{url.removeprefix("http://")}")
  image = http.InferInput("input", [1, 3, 64, 64], "FP32")
  image.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
  print(client.infer("collision", [image]).as_numpy("scores"))

  hub      {demo.hub_url}   operator token in {demo.hub_dir / "operator-token"}
           cloud-hub --data-dir {demo.hub_dir} devices list   (also: models list, rollouts list)
  agents   {", ".join(f"{d} {u}" for d, u in demo.agent_urls.items())}
  pool     {demo.pool_url}
  logs     {demo.workdir / "logs"}
"""
