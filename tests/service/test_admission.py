"""Admission control units (mtdefect.serving.admission, issue #22): the pixel budget waits and gives
up in time, the deadline keeps a margin under MT_TIMEOUT_S, the cost estimate follows what it
observes, the header is read without decoding, and the settings are validated."""

from __future__ import annotations

import time

import anyio
import pytest

from mtdefect.serving.admission import CostModel, Deadline, PixelBudget, Stop, header_pixels, trim_memory
from mtdefect.serving.config import ConfigError, ServeConfig
from mtdefect.serving.errors import ApiError

from .svc_support import encode, tile


def test_budget_admits_within_limit_and_waits_for_room() -> None:
    async def scenario() -> list[str]:
        budget = PixelBudget(100)
        events: list[str] = []
        assert await budget.acquire(60, 1.0)

        async def second() -> None:
            events.append("waiting")
            assert await budget.acquire(60, 2.0)
            events.append("admitted")

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.sleep(0.05)
            assert events == ["waiting"] and budget.used == 60
            await budget.release(60)
        assert budget.used == 60
        return events

    assert anyio.run(scenario) == ["waiting", "admitted"]


def test_budget_gives_up_after_the_wait() -> None:
    async def scenario() -> tuple[bool, float, int]:
        budget = PixelBudget(100)
        await budget.acquire(100, 1.0)
        start = time.monotonic()
        ok = await budget.acquire(1, 0.1)
        return ok, time.monotonic() - start, budget.used

    ok, waited, used = anyio.run(scenario)
    assert not ok and 0.05 < waited < 1.0 and used == 100


def test_an_image_larger_than_the_budget_takes_all_of_it() -> None:
    async def scenario() -> int:
        budget = PixelBudget(100)
        assert await budget.acquire(500, 0.1)
        used = budget.used
        await budget.release(500)
        return used * 1000 + budget.used

    assert anyio.run(scenario) == 100_000


def test_deadline_keeps_a_margin_under_the_timeout() -> None:
    now = time.monotonic()
    assert Deadline(now, 60.0).answer_by == pytest.approx(now + 55.0)
    assert Deadline(now, 3.0).answer_by == pytest.approx(now + 2.4)
    assert Deadline(now - 100, 60.0).left() < 0


def test_stop_raises_a_503_with_retry_after() -> None:
    stop = Stop(Deadline(time.monotonic(), 60.0))
    stop.check()  # in time, wanted: nothing happens
    stop.set("the client disconnected")
    with pytest.raises(ApiError) as caught:
        stop.check()
    assert caught.value.status == 503 and "disconnected" in caught.value.message
    late = Stop(Deadline(time.monotonic() - 60, 60.0))
    with pytest.raises(ApiError) as caught:
        late.check()
    assert caught.value.status == 503 and int(caught.value.headers["Retry-After"]) >= 1


def test_cost_model_follows_observations() -> None:
    cost = CostModel()
    cost.observe(1000, 1.0)  # the first observation replaces the prior
    assert cost.estimate(2000) == pytest.approx(2.0)
    for _ in range(30):
        cost.observe(1000, 0.5)
    assert cost.estimate(2000) == pytest.approx(1.0, rel=1e-3)


def test_header_pixels_without_decoding() -> None:
    assert header_pixels(encode(tile(300, 200))) == 60_000
    assert header_pixels(encode(tile(64, 48), "JPEG")) == 64 * 48
    assert header_pixels(b"not an image") == 0


def test_trim_memory_runs() -> None:
    assert trim_memory() in (True, False)


def test_config_budget_and_window() -> None:
    default = ServeConfig.from_env({})
    assert default.pixel_budget == 2 * default.max_pixels and default.window == 1088
    small = ServeConfig.from_env({"MT_MAX_PIXELS": "90000", "MT_WINDOW": "0"})
    assert small.pixel_budget == 180_000 and small.window is None
    assert small.worker_pixel_budget == 180_000
    two = ServeConfig.from_env({"MT_MAX_PIXELS": "90000", "MT_WORKERS": "2"})
    assert two.worker_pixel_budget == 90_000  # the service's budget is split across its workers
    four = ServeConfig.from_env({"MT_MAX_PIXELS": "90000", "MT_WORKERS": "4"})
    assert four.worker_pixel_budget == 90_000  # but never below the largest image
    with pytest.raises(ConfigError, match="MT_PIXEL_BUDGET"):
        ServeConfig.from_env({"MT_MAX_PIXELS": "90000", "MT_PIXEL_BUDGET": "1000"})
    with pytest.raises(ConfigError, match="MT_WINDOW"):
        ServeConfig.from_env({"MT_WINDOW": "1000"})
