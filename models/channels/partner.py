"""``partner``: resellers' batch files, CSV with a header row, one order per line.

Columns (header names, any order; unknown columns are ignored):

=================== ======== =======================================================
column              required meaning
=================== ======== =======================================================
partner_id          yes      the reseller (its credit account unless account_id is set)
partner_order_id    yes      the reseller's order id (unique per partner)
sku                 yes      the reseller's SKU, mapped to our plan and interval
customer_email      yes      the subscriber
quantity            no       seats/units, default 1
currency            no       ISO 4217, default USD
billing             no       ``invoice`` (default: on the partner's credit line) or ``card``
account_id          no       credit account to invoice, default partner_id
payment_method_id   no       pm_... (card billing)
timezone            no       IANA zone of the subscriber
anchor_day          no       bill on this day of the month (1-31)
trial_days          no       default: the plan's trial
=================== ======== =======================================================

The channel order id is ``{partner_id}:{partner_order_id}``. Each line is parsed on its own: a bad
line becomes an item error (``line N: column: problem``) and the others go on. Every item's ``raw``
is the header plus that line, a CSV file of its own, so it can be dead-lettered and replayed alone.
"""

from __future__ import annotations

import csv
import io

from pydantic import ValidationError

from models.calendar import Interval
from models.errors import ErrorCode, OmsError
from models.orders import (
    AdapterContext,
    BillingMode,
    CanonicalOrder,
    Channel,
    ItemError,
    OrderHint,
    ParsedItem,
    ParsedPayload,
    int_or_none,
)

CONTENT_TYPE = "text/csv"
COLUMNS = (
    "partner_id",
    "partner_order_id",
    "sku",
    "customer_email",
    "quantity",
    "currency",
    "billing",
    "account_id",
    "payment_method_id",
    "timezone",
    "anchor_day",
    "trial_days",
)
REQUIRED = ("partner_id", "partner_order_id", "sku", "customer_email")

# Resellers' SKUs -> (our plan, billing interval).
PARTNER_SKUS: dict[str, tuple[str, Interval]] = {
    "OMS-STARTER-M": ("starter", Interval.MONTHLY),
    "OMS-STARTER-Y": ("starter", Interval.YEARLY),
    "OMS-PRO-M": ("pro", Interval.MONTHLY),
    "OMS-PRO-Q": ("pro", Interval.QUARTERLY),
    "OMS-PRO-Y": ("pro", Interval.YEARLY),
    "OMS-BIZ-M": ("business", Interval.MONTHLY),
    "OMS-BIZ-Y": ("business", Interval.YEARLY),
    "OMS-ENT-Y": ("enterprise", Interval.YEARLY),
}


class _LineError(Exception):
    def __init__(self, code: ErrorCode, column: str, message: str, rule: str) -> None:
        super().__init__(message)
        self.code, self.column, self.message, self.rule = code, column, message, rule


def _as_csv(header: list[str], row: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerow(row)
    return out.getvalue()


def _int(row: dict[str, str], column: str, minimum: int, maximum: int | None = None) -> int | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    if not text.lstrip("-").isdigit():
        raise _LineError(
            ErrorCode.MALFORMED_PAYLOAD,
            column,
            f"{text[:20]!r} is not a whole number",
            "payload.schema",
        )
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise _LineError(
            ErrorCode.MALFORMED_PAYLOAD, column, f"{value} is outside {bound}", "payload.schema"
        )
    return value


def _order(row: dict[str, str], line: int) -> CanonicalOrder:
    for column in REQUIRED:
        if not (row.get(column) or "").strip():
            raise _LineError(ErrorCode.MALFORMED_PAYLOAD, column, "is required", "payload.schema")
    sku = row["sku"].strip()
    if sku not in PARTNER_SKUS:
        raise _LineError(
            ErrorCode.UNKNOWN_SKU,
            "sku",
            f"unknown partner SKU {sku[:40]!r}; known: {', '.join(sorted(PARTNER_SKUS))}",
            "partner.sku",
        )
    plan_id, interval = PARTNER_SKUS[sku]
    currency = (row.get("currency") or "USD").strip().upper()
    if len(currency) != 3 or not currency.isalpha():
        raise _LineError(
            ErrorCode.MALFORMED_PAYLOAD,
            "currency",
            f"{currency[:10]!r} is not a currency code",
            "payload.schema",
        )
    billing_text = (row.get("billing") or "invoice").strip().lower()
    try:
        billing = BillingMode(billing_text)
    except ValueError:
        raise _LineError(
            ErrorCode.MALFORMED_PAYLOAD,
            "billing",
            f"{billing_text[:20]!r} is not invoice or card",
            "payload.schema",
        ) from None
    partner_id = row["partner_id"].strip()
    return CanonicalOrder(
        channel=Channel.PARTNER,
        channel_order_id=f"{partner_id}:{row['partner_order_id'].strip()}",
        email=row["customer_email"].strip(),
        plan_id=plan_id,
        interval=interval,
        currency=currency,
        quantity=_int(row, "quantity", 1) or 1,
        billing=billing,
        payment_method_id=(row.get("payment_method_id") or "").strip() or None,
        account_id=(row.get("account_id") or "").strip() or partner_id,
        timezone=(row.get("timezone") or "").strip() or None,
        anchor_day=_int(row, "anchor_day", 1, 31),
        trial_days=_int(row, "trial_days", 0),
        partner_id=partner_id,
        source={"line": str(line), "sku": sku},
    )


def _hint(row: dict[str, str]) -> OrderHint:
    mapped = PARTNER_SKUS.get((row.get("sku") or "").strip())
    partner = (row.get("partner_id") or "").strip()
    order_id = (row.get("partner_order_id") or "").strip()
    return OrderHint(
        plan_id=mapped[0] if mapped else None,
        interval=mapped[1].value if mapped else None,
        currency=(row.get("currency") or "USD").strip().upper()[:3],
        quantity=int_or_none(row.get("quantity")),
        account_id=(row.get("account_id") or "").strip() or partner or None,
        channel_order_id=f"{partner}:{order_id}" if partner and order_id else None,
    )


def _item(
    line: int,
    raw: str,
    hint: OrderHint,
    order: CanonicalOrder | None = None,
    error: ItemError | None = None,
) -> ParsedItem:
    return ParsedItem(
        index=line, raw=raw, content_type=CONTENT_TYPE, order=order, error=error, hint=hint
    )


def parse(text: str, ctx: AdapterContext) -> ParsedPayload:
    """A partner CSV file -> one item per data line (blank lines skipped).

    Raises:
        OmsError: ``MALFORMED_PAYLOAD`` when the file as a whole is unusable (no header, missing
            required columns, no data lines, more than ``ctx.max_items`` lines).
    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise OmsError(ErrorCode.MALFORMED_PAYLOAD, "partner file is empty") from None
    except csv.Error as err:
        raise OmsError(ErrorCode.MALFORMED_PAYLOAD, f"partner file header: {err}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise OmsError(
            ErrorCode.MALFORMED_PAYLOAD,
            f"partner file header lacks required column(s) {', '.join(missing)}; "
            f"expected columns: {', '.join(COLUMNS)}",
        )
    items: list[ParsedItem] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise OmsError(
                ErrorCode.MALFORMED_PAYLOAD, f"partner file line {reader.line_num}: {err}"
            ) from None
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(items) >= ctx.max_items:
            raise OmsError(
                ErrorCode.MALFORMED_PAYLOAD,
                f"partner file has more than {ctx.max_items} orders; split it into smaller files",
            )
        raw = _as_csv(header, cells)
        row = dict(zip(header, cells, strict=False))
        hint = _hint(row)
        if len(cells) != len(header):
            problem = ItemError(
                code=ErrorCode.MALFORMED_PAYLOAD,
                message=f"partner file line {line}: has {len(cells)} fields, the header "
                f"{len(header)}",
                field=f"line {line}",
            )
            items.append(_item(line, raw, hint, error=problem))
            continue
        try:
            try:
                order = _order(row, line)
            except ValidationError as verr:
                first = verr.errors()[0]
                column = str(first["loc"][0]) if first["loc"] else "line"
                raise _LineError(
                    ErrorCode.MALFORMED_PAYLOAD, column, first["msg"], "payload.schema"
                ) from None
        except _LineError as e:
            problem = ItemError(
                code=e.code,
                message=f"partner file line {line}: {e.column}: {e.message}",
                field=f"line {line}.{e.column}",
                rule=e.rule,
            )
            items.append(_item(line, raw, hint, error=problem))
            continue
        items.append(_item(line, raw, hint, order=order))
    if not items:
        raise OmsError(ErrorCode.MALFORMED_PAYLOAD, "partner file has a header but no order lines")
    return ParsedPayload(channel=Channel.PARTNER, items=items)
