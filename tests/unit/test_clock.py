"""Test clocks without Temporal: the advance durations (hours, days, calendar months clamped to the
month's end), ``--at`` parsing, the clock rows that run at wall-clock speed, and the refusals when
a deployment has test clocks off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from activities.store import Store
from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError, http_status
from models.subscription import Actor
from starter.api import create_app
from starter.cli import app as oms_app
from starter.clock import (
    ClockStore,
    add_months,
    advance_target,
    check_clock_id,
    parse_at,
)
from starter.service import OmsService, SubscribeRequest
from tests.support.auth import operator_headers, with_auth
from workers.config import Config, load_config


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "duration", "expected"),
    [
        (utc(2027, 1, 10, 9, 30), "12h", utc(2027, 1, 10, 21, 30)),
        (utc(2027, 1, 10, 9, 30), "48h", utc(2027, 1, 12, 9, 30)),
        (utc(2027, 1, 10, 9, 30), "3d", utc(2027, 1, 13, 9, 30)),
        (utc(2027, 2, 27), "2d", utc(2027, 3, 1)),
        (utc(2027, 1, 10, 9, 30), "1mo", utc(2027, 2, 10, 9, 30)),
        (utc(2027, 1, 31, 23, 59), "1mo", utc(2027, 2, 28, 23, 59)),  # clamped to Feb's end
        (utc(2028, 1, 31), "1mo", utc(2028, 2, 29)),  # leap year
        (utc(2027, 3, 31), "1mo", utc(2027, 4, 30)),
        (utc(2027, 1, 31), "3mo", utc(2027, 4, 30)),
        (utc(2027, 12, 15), "1mo", utc(2028, 1, 15)),  # over the year end
        (utc(2027, 1, 31), "13mo", utc(2028, 2, 29)),
        (utc(2027, 5, 31), "12mo", utc(2028, 5, 31)),
        (utc(2027, 1, 10), " 2MO ", utc(2027, 3, 10)),  # case and spaces do not matter
        (utc(2027, 1, 10), "120mo", utc(2037, 1, 10)),
    ],
)
def test_advance_target(now: datetime, duration: str, expected: datetime) -> None:
    assert advance_target(now, duration) == expected


def test_months_are_computed_from_the_clock_time_not_an_anchor() -> None:
    # Jan 31 -> Feb 28 -> Mar 28: a clock has no billing anchor to come back to (the
    # subscriptions on it keep theirs: models/calendar.py).
    feb = advance_target(utc(2027, 1, 31), "1mo")
    assert advance_target(feb, "1mo") == utc(2027, 3, 28)
    assert add_months(utc(2027, 1, 31, 8), -1) == utc(2026, 12, 31, 8)


@pytest.mark.parametrize(
    ("duration", "says"),
    [
        ("", "is not Nh, Nd or Nmo"),
        ("1w", "is not Nh, Nd or Nmo"),
        ("1m", "is not Nh, Nd or Nmo"),  # minutes or months? neither: say mo
        ("1.5d", "is not Nh, Nd or Nmo"),
        ("-1d", "is not Nh, Nd or Nmo"),
        ("1mo2d", "is not Nh, Nd or Nmo"),
        ("d", "is not Nh, Nd or Nmo"),
        ("0d", "must be positive"),
        ("0h", "must be positive"),
        ("121mo", "at most 120mo"),
        ("3661d", "at most 3660d"),
        ("9999999h", "is not Nh, Nd or Nmo"),
    ],
)
def test_bad_durations_are_invalid_requests(duration: str, says: str) -> None:
    with pytest.raises(OmsError) as err:
        advance_target(utc(2027, 1, 1), duration)
    assert err.value.code == ErrorCode.INVALID_REQUEST
    assert says in err.value.message


def test_parse_at() -> None:
    assert parse_at("2027-01-31") == utc(2027, 1, 31)
    assert parse_at("2027-01-31T09:15:00Z") == utc(2027, 1, 31, 9, 15)
    assert parse_at("2027-01-31T09:15:00") == utc(2027, 1, 31, 9, 15)  # no offset: UTC
    assert parse_at("2027-01-31T10:15:00+01:00") == utc(2027, 1, 31, 9, 15)
    for bad in ("tomorrow", "2027-13-01", "31/01/2027"):
        with pytest.raises(OmsError) as err:
            parse_at(bad)
        assert err.value.code == ErrorCode.INVALID_REQUEST


def test_clock_ids() -> None:
    assert check_clock_id("clk_0123456789abcdef") == "clk_0123456789abcdef"
    for bad in ("clk_1", "x' OR 'a'='a", "sub_0123456789abcdef"):
        with pytest.raises(OmsError) as err:
            check_clock_id(bad)
        assert err.value.code == ErrorCode.CLOCK_NOT_FOUND


def test_error_codes_map_to_403_and_404() -> None:
    assert http_status(ErrorCode.TEST_CLOCKS_DISABLED) == 403
    assert http_status(ErrorCode.CLOCK_NOT_FOUND) == 404


# --- the rows -------------------------------------------------------------------------------


class FakeWall:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_clock_runs_at_wall_speed_and_advances_from_its_current_time(engine: Engine) -> None:
    wall = FakeWall(utc(2026, 12, 1, 10))
    store = ClockStore(engine, wall)
    clock = store.create(utc(2027, 1, 31))
    assert clock.now == utc(2027, 1, 31) and clock.created_at == utc(2026, 12, 1, 10)

    wall.now += timedelta(minutes=5)  # the workflows on it run at wall speed: so does the clock
    assert store.get(clock.clock_id).now == utc(2027, 1, 31, 0, 5)

    before, target, synced_at = store.move(clock.clock_id, "1mo")
    assert (before, target, synced_at) == (utc(2027, 1, 31, 0, 5), utc(2027, 2, 28, 0, 5), wall.now)
    wall.now += timedelta(seconds=30)  # the advance takes a while; then the clock re-anchors
    store.reanchor(clock.clock_id, target, synced_at)
    assert store.get(clock.clock_id).now == utc(2027, 2, 28, 0, 5)

    # Another advance moved the clock meanwhile: a late re-anchor does not undo it.
    _, moved, _ = store.move(clock.clock_id, "2d")
    store.reanchor(clock.clock_id, target, synced_at)
    assert store.get(clock.clock_id).now == moved == utc(2027, 3, 2, 0, 5)


def test_clock_rows_refuse_the_past_unknown_ids_and_bad_durations(engine: Engine) -> None:
    wall = FakeWall(utc(2026, 12, 1, 10))
    store = ClockStore(engine, wall)
    with pytest.raises(OmsError) as err:
        store.create(utc(2026, 11, 30))
    assert err.value.code == ErrorCode.INVALID_REQUEST and "past" in err.value.message
    with pytest.raises(OmsError) as err:
        store.create(utc(9999, 1, 1))
    assert err.value.code == ErrorCode.INVALID_REQUEST and "ahead" in err.value.message
    with pytest.raises(OmsError) as err:
        advance_target(utc(9999, 6, 1), "12mo")
    assert err.value.code == ErrorCode.INVALID_REQUEST and "calendar" in err.value.message
    # Seconds in the past (a slow client) mean now.
    assert store.create(wall.now - timedelta(seconds=20)).now == wall.now
    assert store.create().now == wall.now

    for call in (lambda: store.get("clk_0000000000000000"), lambda: store.move("nope", "1d")):
        with pytest.raises(OmsError) as err:
            call()
        assert err.value.code == ErrorCode.CLOCK_NOT_FOUND
    clock = store.create()
    with pytest.raises(OmsError) as err:
        store.move(clock.clock_id, "1 fortnight")
    assert err.value.code == ErrorCode.INVALID_REQUEST
    assert store.get(clock.clock_id).now == wall.now  # unchanged


# --- refused where test clocks are off ------------------------------------------------------


@pytest.fixture
def clocks_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OMS_TEST_CLOCKS", "false")
    # Nothing listens here: the refusal must come before any connection attempt.
    monkeypatch.setenv("OMS_TEMPORAL_ADDRESS", "127.0.0.1:1")
    yield


def _cli_error(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(oms_app, args)
    assert result.exit_code == 2, result.output
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    return error


def test_the_cli_refuses_clocks_when_the_deployment_has_them_off(clocks_off: None) -> None:
    assert load_config().temporal.test_clocks is False
    for args in (
        ["clock", "create", "--json"],
        ["clock", "now", "clk_0123456789abcdef", "--json"],
        ["clock", "advance", "clk_0123456789abcdef", "1mo", "--json"],
        [
            "subscribe",
            "--email",
            "ada@example.com",
            "--plan",
            "pro",
            "--payment-method",
            "pm_abc123",
            "--clock",
            "clk_0123456789abcdef",
            "--json",
        ],
    ):
        error = _cli_error(args)
        assert error["code"] == "TEST_CLOCKS_DISABLED", args
        assert "OMS_TEST_CLOCKS" in error["message"]


def test_clocks_are_off_unless_a_deployment_turns_them_on(tmp_path: Any) -> None:
    empty = tmp_path / "prod.yaml"
    empty.write_text("")
    assert load_config(empty, env={}).temporal.test_clocks is False
    assert load_config(empty, env={"OMS_TEST_CLOCKS": "true"}).temporal.test_clocks is True
    # The shipped dev stack file turns them on, with the attributes they need.
    dev = load_config(env={})
    assert dev.temporal.test_clocks is True
    assert dev.temporal.search_attributes["TestClockId"] == "Keyword"
    assert dev.temporal.search_attributes["NeedsAttention"] == "Bool"


async def test_the_service_refuses_a_clock_when_off(engine: Engine) -> None:
    service = OmsService(
        None,  # type: ignore[arg-type]  # never reached
        Store(engine),
        default_catalog(),
        task_queue="unused",
    )
    req = SubscribeRequest(
        email="ada@example.com",
        plan_id="pro",
        payment_method_id="pm_abc123",
        clock_id="clk_0123456789abcdef",
    )
    for call in (
        lambda: service.subscribe(req, Actor()),
        lambda: service.create_clock(),
        lambda: service.advance_clock("clk_0123456789abcdef", "1d"),
    ):
        with pytest.raises(OmsError) as err:
            await call()
        assert err.value.code == ErrorCode.TEST_CLOCKS_DISABLED


async def test_the_api_answers_403_when_clocks_are_off(engine: Engine, db_url: str) -> None:
    config = Config.model_validate(with_auth({"database": {"url": db_url}}))
    assert config.temporal.test_clocks is False
    service = OmsService(
        None,  # type: ignore[arg-type]  # never reached
        Store(engine),
        default_catalog(),
        task_queue="unused",
    )
    app = create_app(config, service=service)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers=operator_headers(engine),
        ) as api,
    ):
        for method, path, body in (
            ("POST", "/clocks", {}),
            ("GET", "/clocks/clk_0123456789abcdef", None),
            ("POST", "/clocks/clk_0123456789abcdef/advance", {"duration": "1mo"}),
            (
                "POST",
                "/subscriptions",
                {
                    "email": "ada@example.com",
                    "plan_id": "pro",
                    "payment_method_id": "pm_abc123",
                    "clock_id": "clk_0123456789abcdef",
                },
            ),
        ):
            resp = await api.request(method, path, json=body)
            assert resp.status_code == 403, (path, resp.text)
            assert resp.json()["error"]["code"] == "TEST_CLOCKS_DISABLED"
