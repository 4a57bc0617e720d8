"""The `edge-agent` command: parses the arguments of serve, doctor and provision, and calls their code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import AgentError
from edge_agent.fleet.provision import add_provision_parser
from models.errors import ModelsError

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

__all__ = ["build_parser", "main"]

Command = Callable[[argparse.Namespace], int]


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
        server_name=args.server_name,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """edge-agent serve."""
    try:
        config = _serve_config(args)
    except (AgentError, ModelsError, ValueError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    from edge_agent.app import Listeners, serve
    from edge_agent.cell.roles import has_cell

    if args.role is not None:
        from edge_agent.cell.priority import die_with_parent
        from edge_agent.cell.supervisor import parent_pid

        supervisor = parent_pid()
        if supervisor is not None:
            die_with_parent(supervisor)
        listeners = Listeners(
            role=args.role,
            listen_fd=args.listen_fd,
            unix_fd=args.unix_fd,
            ready_fd=args.ready_fd,
            cell_url=args.cell_url,
            cell_socket=args.cell_socket,
        )
        return asyncio.run(serve(config, listeners))
    if args.config is not None and has_cell(config):
        from edge_agent.cell.supervisor import supervise

        return supervise(config, args.config, args.log_level)
    return asyncio.run(serve(config))


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
    serve.add_argument("--server-name", default="edgefleet-edge-agent", help="name GET /v2 answers (e.g. triton)")
    # Internal: how the supervisor of a safety cell starts its two processes (docs/scheduling.md).
    serve.add_argument("--role", choices=["cell", "main"], default=None, help=argparse.SUPPRESS)
    serve.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--unix-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--cell-url", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--cell-socket", type=Path, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="hardware report and runtime self-check on the zoo models")
    doctor.add_argument("--zoo-dir", type=Path, default=None, help="zoo packages (default: the bundled zoo)")
    doctor.set_defaults(func=cmd_doctor)
    add_provision_parser(sub)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Command = args.func
    return func(args)
