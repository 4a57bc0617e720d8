"""The `edge-agent` command: serve, doctor (and `provision`, registered by the fleet module)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import AgentError
from models.errors import ModelsError

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

__all__ = ["build_parser", "main"]

logger = logging.getLogger("edge_agent")

Command = Callable[[argparse.Namespace], int]
# Modules that add subcommands with `register(subparsers)`, if installed (e.g. the fleet's `provision`).
_EXTENSIONS = ("edge_agent.fleet.cli",)


def _serve_config(args: argparse.Namespace) -> AgentConfig:
    """The AgentConfig for `serve` from --config or the standalone flags."""
    from edge_agent.config import AgentConfig, BatchingConfig, HttpConfig, load_config
    from models.runtimes.config import OnnxRuntimeConfig

    if args.config is not None:
        if args.standalone or args.model_dir:
            raise AgentError("--config cannot be combined with --standalone/--model-dir")
        return load_config(args.config)
    if not args.standalone or not args.model_dir:
        raise AgentError("serve needs --config FILE, or --standalone --model-dir DIR")
    if not args.no_verify and not args.trust:
        raise AgentError("standalone: give --trust PUBKEY.pem to verify packages, or --no-verify (development)")
    return AgentConfig(
        standalone=True,
        http=HttpConfig(host=args.host, port=args.port),
        state_dir=args.state_dir,
        model_dirs=args.model_dir,
        trusted_keys=args.trust or [],
        verify_packages=not args.no_verify,
        runtime=OnnxRuntimeConfig(intra_op_threads=args.threads, inter_op_threads=1 if args.threads else None),
        batching=BatchingConfig(max_queue_delay_ms=args.max_queue_delay_ms),
        expose_deadline_ms=args.deadline_ms,
    )


async def _serve(config: AgentConfig) -> int:
    from aiohttp import web

    from edge_agent.http import CORE_KEY, STARTUP_KEY, make_app

    app = make_app(config)
    if config.fleet is not None and not config.standalone and config.state_dir is not None:
        from edge_agent.fleet.wiring import attach_fleet

        attach_fleet(app, config.fleet, config.state_dir, CORE_KEY)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.http.host, config.http.port, shutdown_timeout=30.0)
        await site.start()
        startup = app[STARTUP_KEY]
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if startup.done():
            if startup.exception() is not None:
                print(f"edge-agent: start failed: {startup.exception()}", file=sys.stderr, flush=True)
                return 1
            port = _bound_port(site) or config.http.port
            ready = app[CORE_KEY].ready()
            print(f"edge-agent ready on http://{config.http.host}:{port}", flush=True)
            logger.info("ready=%s", ready)
            await stopping
        else:
            startup.cancel()
        logger.info("shutting down: finishing in-flight requests")
        return 0
    finally:
        await runner.cleanup()


def _bound_port(site: object) -> int | None:
    server = getattr(site, "_server", None)
    for sock in getattr(server, "sockets", None) or []:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    """edge-agent serve."""
    try:
        config = _serve_config(args)
    except (AgentError, ModelsError, ValueError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config))


def cmd_doctor(args: argparse.Namespace) -> int:
    """edge-agent doctor."""
    from edge_agent.doctor import run_doctor

    return int(asyncio.run(run_doctor(args.zoo_dir, sys.stdout)))


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The argument parser; other modules may add subcommands to the returned subparsers."""
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgefleet edge agent")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve models over the V2 HTTP API")
    serve.add_argument("--config", type=Path, help="agent config (TOML)")
    serve.add_argument("--standalone", action="store_true", help="no fleet link: serve --model-dir (dev, cloud pool)")
    serve.add_argument("--model-dir", type=Path, action="append", default=[], help="directory of packages")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (standalone)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port, 0 = any free (standalone)")
    serve.add_argument("--state-dir", type=Path, default=None, help="model store; default: serve in place")
    serve.add_argument("--trust", type=Path, action="append", help="trusted signing public key (PEM)")
    serve.add_argument("--no-verify", action="store_true", help="skip signature checks (development only)")
    serve.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    serve.add_argument("--max-queue-delay-ms", type=float, default=0.0, help="batcher max queue delay")
    serve.add_argument(
        "--deadline-ms",
        type=int,
        default=60_000,
        help="deadline of every model (standalone; callers such as offloading agents send their own timeout)",
    )
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="hardware report and runtime self-check on the zoo models")
    doctor.add_argument("--zoo-dir", type=Path, default=None, help="zoo packages (default: the bundled zoo)")
    doctor.set_defaults(func=cmd_doctor)
    _register_extensions(sub)
    return parser, sub


def _register_extensions(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands owned by other modules (e.g. `provision`), added only if those modules exist."""
    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Command = args.func
    return func(args)
