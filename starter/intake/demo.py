"""Demo data for ``oms intake seed``: credit accounts and stock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from activities.intake_store import CreditAccountSeed, IntakeStore
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT
from models.ids import customer_id_for_email
from models.redact import contains_card

log = structlog.get_logger("starter.intake")  # the package's one logger name


# Payment methods on file are tokenized at the local gateway when the seed runs (card numbers
# are test cards; they never leave this machine).
DEMO_SEED: dict[str, Any] = {
    "accounts": [
        {
            "account_id": "acme",
            "billing_email": "billing@acme.example",
            "name": "Acme Resellers (trusted partner)",
            "credit_limit_minor": 50_000_000,
            "outstanding_minor": 1_200_000,
            "trusted_partner": True,
            "paid_invoices": 48,
            "payment_method": "card:4242424242424242",
        },
        {
            "account_id": "globex",
            "billing_email": "billing@globex.example",
            "name": "Globex Reseller (new partner, 1 late payment)",
            "credit_limit_minor": 2_000_000,
            "outstanding_minor": 1_850_000,
            "paid_invoices": 5,
            "late_payments": 1,
            "payment_method": "card:4242424242424242",
        },
        {
            "account_id": "initech",
            "billing_email": "billing@initech.example",
            "name": "Initech (enterprise customer in good standing)",
            "credit_limit_minor": 5_000_000,
            "enterprise": True,
            "paid_invoices": 12,
            "payment_method": "card:4242424242424242",
        },
        {
            "account_id": "hooli",
            "billing_email": "billing@hooli.example",
            "name": "Hooli (on hold)",
            "credit_limit_minor": 10_000_000,
            "outstanding_minor": 9_000_000,
            "good_standing": False,
            "paid_invoices": 20,
            "late_payments": 4,
            "payment_method": "card:4242424242424242",
        },
        {
            "email": "loyal@example.com",
            "name": "A customer in good standing (card orders get the relaxed rules)",
            "credit_limit_minor": 0,
            "paid_invoices": 24,
        },
    ],
    "stock": {"BEANS-1KG": 500},
}


async def seed(
    store: IntakeStore,
    data: Mapping[str, Any] | None = None,
    tokenize: Callable[[str], str] | None = None,
    *,
    tenant_id: str = DEFAULT_TENANT,
) -> dict[str, Any]:
    """Load credit accounts and stock (idempotent: accounts and stock are overwritten).

    Args:
        store: Where to write.
        data: ``{"accounts": [...], "stock": {sku: on_hand}}``; :data:`DEMO_SEED` by default.
            An account is named by ``account_id`` or by ``email`` (its customer id is used).
            ``payment_method`` is a ``pm_...`` token or ``card:NUMBER`` (a test card).
        tokenize: Turns a test card number into a ``pm_...`` token (the local gateway); without
            it ``card:`` methods are left unset.
        tenant_id: The tenant the accounts belong to (the caller's; a file cannot name one).
            Stock is global, like the catalog.
    """
    data = DEMO_SEED if data is None else data
    accounts: list[dict[str, Any]] = []
    for raw in data.get("accounts", []):
        entry = dict(raw)
        email = entry.pop("email", None)
        account_id = entry.pop("account_id", None) or (
            customer_id_for_email(email) if email else None
        )
        if not account_id:
            raise OmsError(
                ErrorCode.INVALID_REQUEST, f"seed account needs account_id or email: {raw}"
            )
        if contains_card(str(account_id)):
            raise OmsError(
                ErrorCode.INVALID_REQUEST, "an account id must not look like a card number"
            )
        method = entry.pop("payment_method", None)
        pm: str | None = None
        if isinstance(method, str) and method.startswith("card:"):
            pm = await asyncio.to_thread(tokenize, method[5:]) if tokenize else None
        elif isinstance(method, str):
            pm = method
        known = set(CreditAccountSeed.__dataclass_fields__) - {
            "account_id",
            "payment_method_id",
            "tenant_id",  # the caller's, never the file's
        }
        unknown = set(entry) - known
        if unknown:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"seed account {account_id}: unknown field(s) {', '.join(sorted(unknown))}",
            )
        row = await asyncio.to_thread(
            store.upsert_credit_account,
            CreditAccountSeed(
                account_id=account_id, payment_method_id=pm, tenant_id=tenant_id, **entry
            ),
        )
        accounts.append({"account_id": row.account_id, "name": row.name, "payment_method_id": pm})
    stock: dict[str, int] = {}
    for sku, on_hand in dict(data.get("stock", {})).items():
        await asyncio.to_thread(store.set_stock, str(sku), int(on_hand))
        stock[str(sku)] = int(on_hand)
    log.info("intake.seeded", accounts=len(accounts), skus=len(stock))
    return {"accounts": accounts, "stock": stock}
