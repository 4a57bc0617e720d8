"""The agent's own view of a phase: its /metrics read before and after, per pipeline (V2 name).

`edgefleet_request_latency_seconds` is the agent's latency histogram (edge_agent/metrics.py), so its p99 is
known only to a bucket: reported as the bucket's upper bound ("<=50"). Its 50 ms bucket is the safety
deadline, so the count above it is exact. The agent's clock is its own (where it starts is the agent's
business: see docs/scheduling.md); the client's clock starts when the request is written to the socket.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

LATENCY = "edgefleet_request_latency_seconds"
ROUTES = "edgefleet_routes_total"
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Snapshot:
    """Latency buckets and routes per pipeline, as one /metrics scrape said them."""

    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # model -> le -> cumulative count
    routes: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, route) -> count
    ok: bool = True


def scrape(port: int) -> Snapshot:
    """Read the agent's /metrics on 127.0.0.1:`port` (an empty, not-ok snapshot if it has none)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):
        return Snapshot(ok=False)
    snap = Snapshot()
    for name, labels_text, value in _SAMPLE.findall(text):
        labels = dict(_LABEL.findall(labels_text))
        if name == f"{LATENCY}_bucket":
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            snap.buckets.setdefault(labels["model"], {})[le] = float(value)
        elif name == ROUTES:
            snap.routes[(labels["model"], labels["route"])] = float(value)
    return snap


@dataclass(frozen=True)
class AgentView:
    """One pipeline over one phase, as the agent counted it."""

    count: int  # requests the agent saw answered (any status)
    p99_le_s: float  # upper bound of the bucket holding the 99th percentile (inf: above the last bucket)
    over_s: float  # the bound `over` counts against
    over: int  # requests the agent timed above `over_s`
    routes: dict[str, int]

    def p99_text(self) -> str:
        """ "<=50" (ms), or "n/a" when the agent counted nothing."""
        if not self.count:
            return "n/a"
        return ">5000" if math.isinf(self.p99_le_s) else f"<={self.p99_le_s * 1000:g}"


def view(before: Snapshot, after: Snapshot, model: str, deadline_s: float) -> AgentView:
    """What the agent counted for `model` between two scrapes."""
    old, new = before.buckets.get(model, {}), after.buckets.get(model, {})
    delta = {le: new[le] - old.get(le, 0.0) for le in sorted(new)}
    count = int(delta.get(math.inf, 0.0))
    p99 = math.inf
    for le, cumulative in delta.items():
        if count and cumulative >= 0.99 * count:
            p99 = le
            break
    within = delta.get(deadline_s)
    over = count - int(within) if within is not None else -1  # -1: the deadline is not a bucket bound
    routes = {
        route: int(value - before.routes.get((m, route), 0.0))
        for (m, route), value in after.routes.items()
        if m == model and value - before.routes.get((m, route), 0.0)
    }
    return AgentView(count=count, p99_le_s=p99, over_s=deadline_s, over=over, routes=routes)


def scrape_both(safety_port: int, main_port: int) -> tuple[Snapshot, Snapshot]:
    """The safety listener's and the main listener's /metrics (the same scrape when they are one port)."""
    main = scrape(main_port)
    return (main if safety_port == main_port else scrape(safety_port)), main
