"""What the demo knows while it runs: its steps, the fleet and rollout as the hub reports them, and the
rollout's timeline. The live view draws it; the summary is made from it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

StepStatus = Literal["running", "ok", "skipped", "failed"]


@dataclass
class Step:
    """One step of the scenario."""

    name: str
    status: StepStatus
    detail: str
    at_s: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "at_s": round(self.at_s, 2)}


@dataclass
class DemoState:
    """Shared by the scenario (writes), the hub poller (writes) and the view (reads); one event loop."""

    announce: Callable[[Step], None] = lambda _step: None
    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    provisioned: list[str] = field(default_factory=list)
    rollout: dict[str, Any] | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "starting"
    _last: dict[str, Any] = field(default_factory=dict)
    _device_status: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.started

    def step(self, name: str, status: StepStatus, detail: str = "") -> None:
        """Record (or update) a step and announce it."""
        existing = next((s for s in reversed(self.steps) if s.name == name), None)
        if existing is not None and existing.status == "running":
            existing.status, existing.detail, existing.at_s = status, detail, self.elapsed()
            step = existing
        else:
            step = Step(name, status, detail, self.elapsed())
            self.steps.append(step)
        self.announce(step)

    def skipped(self) -> list[Step]:
        """Steps that were skipped, with why."""
        return [s for s in self.steps if s.status == "skipped"]

    def mark(self, event: str, **extra: Any) -> None:
        """Add a rollout timeline event."""
        self.timeline.append({"event": event, "at_s": round(self.elapsed(), 2), **extra})

    def observe_rollout(self, detail: dict[str, Any]) -> None:
        """Take a rollout detail from the hub; add timeline events for what changed since the last one."""
        self.rollout = detail
        last, self._last = self._last, {"state": detail.get("state"), "wave": detail.get("wave")}
        if detail.get("state") != last.get("state") and detail.get("state") not in (None, "pending"):
            self.mark(f"state {detail['state']}")
        if detail.get("state") == "running" and detail.get("wave") != last.get("wave"):
            wave = int(detail.get("wave") or 0)
            canary = bool(detail.get("spec", {}).get("canary")) and wave == 0
            self.mark("canary started" if canary else f"wave {wave} started", wave=wave)
        for device in detail.get("devices", []):
            key = device["device_id"]
            if device.get("status") != self._device_status.get(key):
                self._device_status[key] = device.get("status")
                if device.get("status") == "active":
                    what = "canary active" if device.get("wave") == 0 and detail["spec"].get("canary") else "active"
                    self.mark(f"{device['device_id']} {what}", wave=device.get("wave"))
                elif device.get("status") in ("failed", "rolled_back"):
                    self.mark(f"{device['device_id']} {device['status']}", error=device.get("error"))
