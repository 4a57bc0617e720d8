"""A safety request is answered by its deadline or refused at that moment, never answered late."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edge_agent.scheduler.queue import Expired
from edge_agent.serving.admission import Served, answered_by


async def _answer(after_s: float) -> Served:
    await asyncio.sleep(after_s)
    return Served({"y": np.zeros(1)}, "local")


async def test_an_answer_in_time_is_returned() -> None:
    served = await answered_by(_answer(0.01), 1.0, "collision")
    assert served.where == "local"


async def test_a_late_answer_is_refused_at_the_deadline_not_when_it_comes() -> None:
    start = time.monotonic()
    with pytest.raises(Expired, match="deadline"):
        await answered_by(_answer(0.5), 0.05, "collision")
    assert time.monotonic() - start < 0.3  # refused at ~50 ms, not at the answer's 500 ms


async def test_the_abandoned_call_finishes_quietly() -> None:
    async def failing() -> Served:
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    with pytest.raises(Expired):
        await answered_by(failing(), 0.01, "collision")
    await asyncio.sleep(0.1)
    assert errors == []
