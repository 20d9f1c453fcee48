"""``oms quote``: what-if quotes for a plan change or a cancellation, computed locally.

No server is involved: the commands call the pure billing math in ``models/`` and print the
invoice lines it would produce. Prices are typed in major units (``30.00``) and parsed exactly.
Bad input exits with status 2 and a stable error code, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date
from typing import Annotated, Any

import typer

from models.calendar import Interval, parse_interval
from models.errors import ErrorCode
from models.invoice import InvoiceLine
from models.money import BillingInputError, format_money, normalize_currency, parse_amount
from models.proration import quote_cancellation, quote_change

app = typer.Typer(
    help="What-if quotes: the lines a change or cancellation would produce.",
    no_args_is_help=True,
)

_INTERVALS = ", ".join(i.value for i in Interval)

CurrencyOpt = Annotated[str, typer.Option(help="ISO 4217 currency code, e.g. USD, JPY, KWD.")]
IntervalOpt = Annotated[str, typer.Option(help=f"Billing interval: {_INTERVALS}.")]
AnchorOpt = Annotated[str, typer.Option(help="Anchor date of the schedule, YYYY-MM-DD.")]
BilledOpt = Annotated[
    str | None,
    typer.Option(help="Amount invoiced for the current period (default: price x quantity)."),
]
CreditedOpt = Annotated[
    str, typer.Option(help="Credits already issued against the current period.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _parse_date(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE, f"{name} {text!r} is not a date like 2024-04-11"
        ) from None


def _parse_quantity(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BillingInputError(
            ErrorCode.INVALID_REQUEST, f"{name} {text!r} is not a whole number"
        ) from None


def _line_json(line: InvoiceLine) -> dict[str, Any]:
    return {
        "kind": line.kind.value,
        "description": line.description,
        "amount_minor": line.amount_minor,
        "currency": line.currency,
        "period_start": line.period_start.isoformat() if line.period_start else None,
        "period_end": line.period_end.isoformat() if line.period_end else None,
    }


def _emit(
    lines: Sequence[InvoiceLine],
    currency: str,
    effective: date,
    next_billing: date | None,
    as_json: bool,
) -> None:
    total = sum(line.amount_minor for line in lines)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "lines": [_line_json(line) for line in lines],
                    "total_minor": total,
                    "currency": currency,
                    "effective_date": effective.isoformat(),
                    "next_billing_date": next_billing.isoformat() if next_billing else None,
                }
            )
        )
        return
    rows = [
        (
            line.description,
            f"{line.period_start} to {line.period_end}" if line.period_start else "",
            format_money(line.amount_minor, currency),
        )
        for line in lines
    ]
    header = ("Description", "Period", "Amount")
    total_row = ("Total", "", format_money(total, currency))
    widths = [max(len(row[i]) for row in [header, *rows, total_row]) for i in range(3)]
    for row in [header, *rows, total_row]:
        typer.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
    summary = f"Effective {effective}"
    if next_billing is not None:
        summary += f"; next billing date {next_billing}"
    typer.echo(f"\n{summary}.")


def _run(as_json: bool, body: Callable[[], None]) -> None:
    """Run ``body``; report bad input as a stable code and exit 2 instead of a traceback."""
    try:
        body()
    except (ValueError, OverflowError) as exc:
        code = exc.code if isinstance(exc, BillingInputError) else ErrorCode.INVALID_REQUEST
        message = str(exc).strip()
        if as_json:
            typer.echo(json.dumps({"error": {"code": code.value, "message": message}}))
        else:
            typer.echo(f"error {code.value}: {message}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def change(
    currency: CurrencyOpt,
    interval: IntervalOpt,
    anchor: AnchorOpt,
    change_date: Annotated[
        str, typer.Option("--date", help="First day on the new terms, YYYY-MM-DD.")
    ],
    old_price: Annotated[str, typer.Option(help="Unit price invoiced for the current period.")],
    new_price: Annotated[str, typer.Option(help="Unit price of the new plan per period.")],
    old_quantity: Annotated[str, typer.Option(help="Current quantity.")] = "1",
    new_quantity: Annotated[str, typer.Option(help="New quantity.")] = "1",
    billed: BilledOpt = None,
    credited: CreditedOpt = "0",
    new_interval: Annotated[
        str | None, typer.Option(help="New billing interval, if it changes.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Quote a mid-period upgrade, downgrade or quantity change (billed in advance)."""

    def body() -> None:
        code = normalize_currency(currency)
        old_unit = parse_amount(old_price, code)
        old_qty = _parse_quantity(old_quantity, "--old-quantity")
        quote = quote_change(
            currency=code,
            anchor=_parse_date(anchor, "--anchor"),
            interval=parse_interval(interval),
            change_date=_parse_date(change_date, "--date"),
            billed_unit_amount_minor=old_unit,
            old_quantity=old_qty,
            billed_amount_minor=(
                old_unit * old_qty if billed is None else parse_amount(billed, code)
            ),
            credits_already_issued_minor=parse_amount(credited, code),
            new_unit_amount_minor=parse_amount(new_price, code),
            new_quantity=_parse_quantity(new_quantity, "--new-quantity"),
            new_interval=None if new_interval is None else parse_interval(new_interval),
        )
        _emit(quote.lines, code, quote.effective_date, quote.next_billing_date, as_json)

    _run(as_json, body)


@app.command()
def cancel(
    currency: CurrencyOpt,
    interval: IntervalOpt,
    anchor: AnchorOpt,
    cancel_date: Annotated[
        str, typer.Option("--date", help="First day without service, YYYY-MM-DD.")
    ],
    price: Annotated[str, typer.Option(help="Unit price per period.")],
    quantity: Annotated[str, typer.Option(help="Quantity.")] = "1",
    billed: BilledOpt = None,
    credited: CreditedOpt = "0",
    arrears: Annotated[
        bool, typer.Option("--arrears", help="The item is billed at the end of each period.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Quote the credit (billed in advance) or final charge (in arrears) of a cancellation."""

    def body() -> None:
        code = normalize_currency(currency)
        unit = parse_amount(price, code)
        qty = _parse_quantity(quantity, "--quantity")
        effective = _parse_date(cancel_date, "--date")
        lines = quote_cancellation(
            currency=code,
            anchor=_parse_date(anchor, "--anchor"),
            interval=parse_interval(interval),
            cancel_date=effective,
            billed_unit_amount_minor=unit,
            quantity=qty,
            billed_amount_minor=unit * qty if billed is None else parse_amount(billed, code),
            credits_already_issued_minor=parse_amount(credited, code),
            billed_in_arrears=arrears,
        )
        _emit(lines, code, effective, None, as_json)

    _run(as_json, body)
