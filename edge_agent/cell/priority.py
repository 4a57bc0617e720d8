"""OS settings of a supervised child, applied by the child itself before it starts any thread (Linux sets nice
and the scheduling policy per thread; threads created afterwards, onnxruntime's included, inherit them)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPIN_FREE_ENV", "Applied", "apply", "child_env", "die_with_parent", "realtime"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

# numpy's OpenBLAS starts a worker per core that busy-waits (sched_yield) for the next call; in a SCHED_RR process
# sched_yield yields to no normal task, so that idle worker holds a whole core (measured in the demo: the cell at
# 100 % of a core serving 20 req/s, everything else on the device on the other core). The agent uses numpy for
# small array work only: one BLAS thread, and OpenMP (torch's CPU threads) sleeping rather than spinning.
SPIN_FREE_ENV = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def child_env(role: str, environ: dict[str, str]) -> dict[str, str]:
    """The environment a supervised child starts with (read by the libraries at import): the cell always runs
    spin-free; the main process gets the same defaults unless the operator set them."""
    if role == "cell":
        return {**environ, **SPIN_FREE_ENV}
    return {**SPIN_FREE_ENV, **environ}


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the supervisor dies (PR_SET_PDEATHSIG), and exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM on exit still reaches us
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass(frozen=True, slots=True)
class Applied:
    """What the child got: its nice value, policy name and OOM bias (refusals are logged, not fatal)."""

    nice: int
    policy: str
    oom_score_adj: int | None

    def __str__(self) -> str:
        return f"nice {self.nice}, {self.policy}, oom_score_adj {self.oom_score_adj}"


def _set_nice(nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("cannot set nice %s (%s): needs root or CAP_SYS_NICE", nice, exc.strerror)


def _set_rr(priority: int) -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        log.warning("cannot use SCHED_RR %s (%s): needs CAP_SYS_NICE; normal scheduling", priority, exc)
        return "SCHED_OTHER"
    return f"SCHED_RR {priority}"


def _set_oom(adj: int) -> int | None:
    path = Path("/proc/self/oom_score_adj")
    try:
        path.write_text(f"{adj}\n")
        return int(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot set oom_score_adj %s (%s)", adj, exc)
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None


def apply(*, nice: int, rr_priority: int | None, oom_score_adj: int) -> Applied:
    """Set this process's nice, scheduling policy and OOM bias; returns what took effect."""
    _set_nice(nice)
    policy = _set_rr(rr_priority) if rr_priority is not None else "SCHED_OTHER"
    oom = _set_oom(oom_score_adj)
    return Applied(nice=os.getpriority(os.PRIO_PROCESS, 0), policy=policy, oom_score_adj=oom)


def realtime(priority: int) -> str:
    """SCHED_RR at `priority` for every thread of this process (and the threads they start later): applied
    once the cell is ready, so imports, model loading and warm-up run under normal scheduling. The kernel's
    RT throttling (sched_rt_runtime_us, 95 % by default) still leaves the rest of the device CPU time."""
    policy = "SCHED_OTHER"
    for task in sorted(Path("/proc/self/task").iterdir()):
        try:
            os.sched_setscheduler(int(task.name), os.SCHED_RR, os.sched_param(priority))
            policy = f"SCHED_RR {priority}"
        except (OSError, AttributeError) as exc:
            log.warning("cannot use SCHED_RR %s (%s): needs CAP_SYS_NICE; normal scheduling at its nice", priority, exc)
            return "SCHED_OTHER"
    return policy
