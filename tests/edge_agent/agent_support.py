"""Helpers of the agent tests (zoo references, sample inputs, configs, a real server process)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.config import AgentConfig
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE, zoo_package_path

READY_RE = re.compile(r"edge-agent ready on (http://\S+)")
MODELS = {"tiny-mlp": ("1", (64,), "logits"), "tiny-cnn": ("2", (3, 64, 64), "scores")}


class Reference:
    """onnxruntime run directly on the zoo's ONNX files: the expected outputs."""

    def __init__(self) -> None:
        import onnxruntime as ort

        self._sessions = {
            name: ort.InferenceSession(
                str(zoo_package_path(name, version) / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            for name, (version, _, _) in MODELS.items()
        }

    def __call__(self, model: str, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The single output of `model` for `batch`."""
        out: np.ndarray[Any, Any] = self._sessions[model].run(None, {"input": batch})[0]
        return out


def sample(model: str, rows: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """Random FP32 input rows for a zoo model."""
    shape = MODELS[model][1]
    return np.random.default_rng(seed).standard_normal((rows, *shape)).astype(np.float32)


def standalone_config(**overrides: Any) -> AgentConfig:
    """A standalone config serving the zoo in place, verified with the zoo key."""
    values: dict[str, Any] = {
        "standalone": True,
        "model_dirs": [PACKAGES_DIR],
        "trusted_keys": [ZOO_PUBLIC_KEY_FILE],
    }
    values.update(overrides)
    return AgentConfig.model_validate(values)


@dataclass
class AgentProcess:
    """A running `edge-agent serve` child process."""

    proc: subprocess.Popen[str]
    url: str
    output: list[str]
    reader: threading.Thread

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def start_agent(args: list[str], timeout: float = 60.0, preexec_fn: Callable[[], None] | None = None) -> AgentProcess:
    """Start `python -m edge_agent <args>` and wait for its ready line (`preexec_fn` runs in the child)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=preexec_fn,  # noqa: PLW1509 - tests pass only setrlimit, safe between fork and exec
    )
    assert proc.stdout is not None
    output: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            match = READY_RE.search(line)
            if match:
                found.append(match.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("agent did not become ready:\n" + "".join(output))
    if not found:
        proc.wait(5)
        reader.join(5)
        proc.stdout.close()
        raise AssertionError(f"agent exited with {proc.returncode}:\n" + "".join(output))
    return AgentProcess(proc, found[0], output, reader)


def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """A single gzip stream of `inflated` zero bytes (about 1 MiB): full-flushed 1 MiB blocks repeat exactly."""
    mib = 1 << 20
    zeros = bytes(mib)
    enc = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = enc.compress(zeros) + enc.flush(zlib.Z_FULL_FLUSH)
    block = enc.compress(zeros) + enc.flush(zlib.Z_FULL_FLUSH)
    tail = enc.flush()
    crc = 0
    for _ in range(inflated // mib):
        crc = zlib.crc32(zeros, crc)
    trailer = crc.to_bytes(4, "little") + (inflated & 0xFFFFFFFF).to_bytes(4, "little")
    return head + block * (inflated // mib - 1) + tail[:-8] + trailer
