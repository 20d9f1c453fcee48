"""``oms quote``: readable and JSON quotes, stable error codes, exit status 2 on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from starter.quote import app

runner = CliRunner()

UPGRADE = [
    "change",
    "--currency", "USD",
    "--interval", "monthly",
    "--anchor", "2024-04-01",
    "--date", "2024-04-11",
    "--old-price", "30.00",
    "--new-price", "60.00",
]  # fmt: skip
CANCEL = [
    "cancel",
    "--currency", "KWD",
    "--interval", "monthly",
    "--anchor", "2024-04-01",
    "--date", "2024-04-24",
    "--price", "1.000",
]  # fmt: skip


def test_change_prints_a_table_with_each_line_and_the_total() -> None:
    result = runner.invoke(app, UPGRADE)
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["Description", "Period", "Amount"]
    assert "2024-04-11 to 2024-05-01" in rows[1] and rows[1].endswith("-$20.00")
    assert rows[2].endswith("$40.00")
    assert rows[3].startswith("Total") and rows[3].endswith("$20.00")
    assert "next billing date 2024-05-01" in result.stdout


def test_change_json_lists_lines_in_minor_units() -> None:
    result = runner.invoke(app, [*UPGRADE, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["currency"] == "USD"
    assert body["total_minor"] == 2000
    assert body["effective_date"] == "2024-04-11"
    assert body["next_billing_date"] == "2024-05-01"
    assert [(x["kind"], x["amount_minor"]) for x in body["lines"]] == [
        ("proration_credit", -2000),
        ("proration_charge", 4000),
    ]
    assert body["lines"][0]["period_start"] == "2024-04-11"
    assert body["lines"][0]["period_end"] == "2024-05-01"
    assert set(body["lines"][0]) == {
        "kind", "description", "amount_minor", "currency", "period_start", "period_end"
    }  # fmt: skip


def test_change_to_yearly_reports_the_new_plans_next_billing_date() -> None:
    args = [*UPGRADE, "--new-price", "300.00", "--new-interval", "yearly", "--json"]
    body = json.loads(runner.invoke(app, args).stdout)
    assert body["next_billing_date"] == "2025-04-01"
    assert body["lines"][1]["period_end"] == "2025-04-01"


def test_change_caps_the_credit_at_billed_minus_credited() -> None:
    args = [*UPGRADE, "--billed", "30.00", "--credited", "25.00", "--json"]
    body = json.loads(runner.invoke(app, args).stdout)
    assert body["lines"][0]["amount_minor"] == -500


def test_change_of_quantity_uses_old_price_times_quantity_as_billed() -> None:
    args = [
        *UPGRADE,
        "--new-price",
        "30.00",
        "--old-quantity",
        "2",
        "--new-quantity",
        "3",
        "--json",
    ]
    body = json.loads(runner.invoke(app, args).stdout)
    assert [x["amount_minor"] for x in body["lines"]] == [-4000, 6000]


def test_cancel_in_advance_credits_unused_time_in_kwd() -> None:
    result = runner.invoke(app, CANCEL)
    assert result.exit_code == 0, result.output
    assert "-KWD 0.233" in result.stdout
    body = json.loads(runner.invoke(app, [*CANCEL, "--json"]).stdout)
    assert body["total_minor"] == -233
    assert body["next_billing_date"] is None


def test_cancel_in_arrears_charges_used_time() -> None:
    body = json.loads(runner.invoke(app, [*CANCEL, "--arrears", "--json"]).stdout)
    assert [(x["kind"], x["amount_minor"]) for x in body["lines"]] == [("proration_charge", 767)]


def test_cancel_in_jpy_rounds_to_whole_yen() -> None:
    args = [
        "cancel", "--currency", "JPY", "--interval", "monthly", "--anchor", "2024-01-01",
        "--date", "2024-01-22", "--price", "1000", "--json",
    ]  # fmt: skip
    assert json.loads(runner.invoke(app, args).stdout)["total_minor"] == -323


def _replace(args: list[str], option: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(option) + 1] = value
    return out


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (_replace(UPGRADE, "--currency", "XYZ"), "INVALID_CURRENCY", "unknown currency 'XYZ'"),
        (_replace(UPGRADE, "--date", "2024-13-01"), "INVALID_DATE_RANGE", "not a date"),
        (_replace(UPGRADE, "--date", "2024-03-31"), "INVALID_DATE_RANGE", "before the anchor"),
        (_replace(UPGRADE, "--old-price", "30.001"), "INVALID_AMOUNT", "too many decimals"),
        (_replace(UPGRADE, "--new-price", "-60.00"), "INVALID_AMOUNT", "must not be negative"),
        (_replace(UPGRADE, "--new-price", "sixty"), "INVALID_AMOUNT", "not a decimal number"),
        (_replace(UPGRADE, "--interval", "daily"), "INVALID_INTERVAL", "unknown interval"),
        ([*UPGRADE, "--new-quantity", "two"], "INVALID_REQUEST", "not a whole number"),
        ([*UPGRADE, "--new-quantity", "0"], "INVALID_REQUEST", "must be >= 1"),
        ([*UPGRADE, "--credited", "31.00"], "INVALID_AMOUNT", "exceeds billed_amount_minor"),
        (_replace(CANCEL, "--price", "1.5000"), "INVALID_AMOUNT", "KWD allows at most 3"),
    ],
)
def test_bad_input_exits_2_with_a_stable_code_and_no_traceback(
    args: list[str], code: str, fragment: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error {code}: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_input_with_json_prints_an_error_object_on_stdout() -> None:
    result = runner.invoke(app, [*_replace(UPGRADE, "--currency", "XYZ"), "--json"])
    assert result.exit_code == 2
    body = json.loads(result.stdout)
    assert body["error"]["code"] == "INVALID_CURRENCY"
    assert "XYZ" in body["error"]["message"]
