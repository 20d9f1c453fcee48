"""``oms enroll ...``: sign a new customer up, step by step (docs/enrollment.md).

The CLI acts as its principal (``--token``/``OMS_TOKEN``; the dev operator on a dev stack), which
needs ``enrollments:manage``: an assisted sign-up in that principal's tenant. No enrollment token
is needed or shown. Input is checked before anything connects (a code's format, a card number
typed where a token belongs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError

from activities.auth_store import AuthStore
from models.catalog import default_catalog
from models.enrollment import EnrollmentView
from models.errors import ErrorCode, OmsError
from starter.context import open_service
from starter.enrollment.legal import current_privacy, current_terms
from starter.enrollment.service import (
    EnrollmentCaller,
    EnrollmentService,
    StartEnrollment,
    check_code,
    check_payment_method,
    plan_comparison,
    validate_start,
)
from starter.output import JsonOpt, cli_principal, emit_json, fail, table
from workers.config import Config, enrollment_secret, load_config

T = TypeVar("T")

app = typer.Typer(
    help="Sign a new customer up: terms, plans, start, verify, quote, pay (docs/enrollment.md).",
    no_args_is_help=True,
)


def _key(config: Config) -> bytes:
    try:
        return enrollment_secret(config)
    except SystemExit as err:
        raise OmsError(ErrorCode.CONFIG_INVALID, str(err.code).removeprefix("error ")) from None


def _run(as_json: bool, action: Callable[[EnrollmentService, EnrollmentCaller], Awaitable[T]]) -> T:
    """Run one operation as the CLI's principal, turning errors into exit codes."""
    config = load_config()

    async def go() -> T:
        key = _key(config)
        async with open_service(config) as service:
            from activities.enrollment import EnrollmentStore

            engine = service.store.engine
            principal = cli_principal(config, AuthStore(engine))
            enrollments = EnrollmentService(
                service.client,
                EnrollmentStore(engine),
                service.catalog,
                key,
                task_queue=service.task_queue,
                tenant_id=config.enrollment.tenant_id,
                search_attributes=service.search_attributes,
                default_timezone=service.default_timezone,
            )
            return await action(enrollments, EnrollmentCaller(channel="cli", principal=principal))

    try:
        return asyncio.run(go())
    except OmsError as err:
        fail(err, as_json)


def _check(as_json: bool, check: Callable[[], T]) -> T:
    try:
        return check()
    except OmsError as err:
        fail(err, as_json)


def _say_view(view: EnrollmentView) -> None:
    typer.echo(f"{view.enrollment_id}: {view.status.value}")
    c = view.choice
    typer.echo(f"  plan         {c.plan_id} ({c.interval.value}, {c.currency})")
    typer.echo(f"  expires at   {view.expires_at.isoformat()}")
    if view.verified_at is not None:
        typer.echo(f"  verified at  {view.verified_at.isoformat()}")
    elif view.code_expires_at is not None:
        typer.echo(
            f"  code valid until {view.code_expires_at.isoformat()} "
            f"({view.code_attempts_left} tries left)"
        )
    if view.resend_available_at is not None and view.verified_at is None:
        typer.echo(f"  new code from {view.resend_available_at.isoformat()}")
    if view.locked_until is not None:
        typer.echo(f"  locked until {view.locked_until.isoformat()}")
    if view.subscription_id is not None:
        typer.echo(
            f"  subscription {view.subscription_id} ({view.subscription_status}), customer "
            f"{view.customer_id}, tenant {view.account_tenant_id}"
        )
    if view.first_invoice_date is not None:
        typer.echo(f"  first invoice {view.first_invoice_date.isoformat()}")
    if view.tasks:
        typer.echo("  tasks        " + ", ".join(f"{k}: {v}" for k, v in view.tasks.items()))


def _emit_view(view: EnrollmentView, as_json: bool) -> None:
    if as_json:
        emit_json(view)
    else:
        _say_view(view)


@app.command("terms")
def terms(
    show: bool = typer.Option(False, "--show", help="Print the documents' texts too."),
    as_json: bool = JsonOpt,
) -> None:
    """The terms of service and privacy notice a sign-up must show and accept."""
    t, p = current_terms(), current_privacy()
    if as_json:
        out: dict[str, Any] = {"terms_version": t.version, "privacy_version": p.version}
        if show:
            out.update(terms_text=t.text, privacy_text=p.text)
        emit_json(out)
        return
    typer.echo(f"{t.title}: version {t.version} (sha256 {t.sha256[:16]}...)")
    typer.echo(f"{p.title}: version {p.version} (sha256 {p.sha256[:16]}...)")
    if show:
        typer.echo(f"\n{t.text}\n{p.text}")
    else:
        typer.echo(f"Accept both with: oms enroll start ... --accept-terms {t.version}")


@app.command("plans")
def plans(
    currency: str = typer.Option(None, help="Only prices in this currency (USD, EUR, ...)."),
    locale: str = typer.Option("en", help="Format amounts for this locale (en, de, fr-CA)."),
    as_json: bool = JsonOpt,
) -> None:
    """The plan comparison: features, trial days, prices per interval and currency."""
    rows = _check(as_json, lambda: plan_comparison(default_catalog(), currency, locale))
    if as_json:
        emit_json(rows)
        return
    for plan in rows:
        trial = f", {plan['trial_days']}-day trial" if plan["trial_days"] else ""
        sales = "" if plan["self_serve"] else " (talk to sales)"
        typer.echo(f"{plan['name']} [{plan['plan_id']}]{trial}{sales}: {plan['description']}")
        typer.echo(f"  {', '.join(plan['features'])}")
        for price in plan["prices"]:
            if price["offered"] or not plan["self_serve"]:
                typer.echo(f"  {price['amount']:>14} {price['interval']}")
        typer.echo("")


@app.command("start")
def start(
    email: str = typer.Option(..., help="The address to verify (a code is sent there)."),
    plan: str = typer.Option(..., "--plan", help="The plan id (oms enroll plans)."),
    interval: str = typer.Option("monthly", help="monthly, quarterly, yearly, ..."),
    currency: str = typer.Option("USD", help="The currency to pay in."),
    accept_terms: str = typer.Option(
        ...,
        "--accept-terms",
        help="The terms version the customer accepted (oms enroll terms); accepts the privacy "
        "notice of the same release too.",
    ),
    name: str = typer.Option(None, help="The customer's name."),
    phone: str = typer.Option(None, help="Optional: +country code, or national with --country."),
    country: str = typer.Option(None, help="ISO 3166-1 alpha-2 code, e.g. US, DE."),
    locale: str = typer.Option("en", help="Language of the e-mails and the quote (en, de, ...)."),
    timezone: str = typer.Option(None, help="IANA time zone the bills are dated in."),
    marketing: bool = typer.Option(
        False, "--marketing", help="The customer opted in to marketing e-mail (off by default)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Start a sign-up; a verification code goes to the address."""
    terms_doc, privacy_doc = current_terms(), current_privacy()
    # The privacy notice ships with the terms: accepting this release's terms accepts both.
    privacy_version = privacy_doc.version if accept_terms == terms_doc.version else accept_terms
    try:
        req = StartEnrollment(
            email=email,
            name=name,
            phone=phone,
            country=country,
            locale=locale,
            timezone=timezone,
            plan_id=plan,
            interval=interval,
            currency=currency,
            terms_version=accept_terms,
            privacy_version=privacy_version,
            marketing=marketing,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        fail(OmsError(ErrorCode.INVALID_REQUEST, problems), as_json)
    _check(as_json, lambda: validate_start(default_catalog(), req))
    started = _run(as_json, lambda svc, who: svc.start(req, who))
    out = {"enrollment_id": started["enrollment_id"], "status": started["status"]}
    if as_json:
        emit_json(out)
    else:
        typer.echo(
            f"{out['enrollment_id']}: {out['status']}; a code is on its way to the address.\n"
            f"Next: oms enroll verify {out['enrollment_id']} --code CODE "
            f"(expires at {started['expires_at']})"
        )


@app.command("verify")
def verify(
    enrollment_id: str,
    code: str = typer.Option(..., help="The 6-digit code from the e-mail."),
    as_json: bool = JsonOpt,
) -> None:
    """Verify the address with the code e-mailed to it."""
    checked = _check(as_json, lambda: check_code(code))
    view = _run(as_json, lambda svc, who: svc.verify(enrollment_id, checked, who))
    _emit_view(view, as_json)
    if not as_json:
        typer.echo(f"Next: oms enroll quote {view.enrollment_id}, then oms enroll pay")


@app.command("resend")
def resend(enrollment_id: str, as_json: bool = JsonOpt) -> None:
    """Send a new code (the previous one stops working)."""
    view = _run(as_json, lambda svc, who: svc.resend(enrollment_id, who))
    if as_json:
        emit_json(view)
    else:
        typer.echo(f"{view.enrollment_id}: a new code is on its way")


@app.command("choose")
def choose(
    enrollment_id: str,
    plan: str = typer.Option(..., "--plan", help="The plan id."),
    interval: str = typer.Option("monthly", help="The billing interval."),
    currency: str = typer.Option("USD", help="The currency."),
    as_json: bool = JsonOpt,
) -> None:
    """Choose another plan, interval or currency before paying."""
    view = _run(
        as_json,
        lambda svc, who: svc.choose(
            enrollment_id, who, plan_id=plan, interval=interval, currency=currency
        ),
    )
    _emit_view(view, as_json)


@app.command("quote")
def quote(enrollment_id: str, as_json: bool = JsonOpt) -> None:
    """What the chosen plan costs: due today, first charge, trial end, renewal."""
    q = _run(as_json, lambda svc, who: svc.quote(enrollment_id, who))
    if as_json:
        emit_json(q)
        return
    typer.echo(f"{q['plan_name']} ({q['interval']}, {q['currency']})")
    rows = [["due today", "", q["due_today"]["amount"]]]
    if q["trial_end"]:
        rows.append(["trial ends", q["trial_end"], ""])
    first = q["first_charge"]
    for line in first["lines"]:
        rows.append([f"first charge: {line['description']}", first["date"], line["amount"]])
    rows.append(["then every period", q["renewal"]["date"], q["renewal"]["amount"]])
    table(rows, ["", "date", "amount"])


@app.command("pay")
def pay(
    enrollment_id: str,
    payment_method: str = typer.Option(
        ..., "--payment-method", help="The gateway's token (pm_...; oms dev card locally)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Save the card, create the account and start the subscription."""
    pm = _check(as_json, lambda: check_payment_method(payment_method))
    out = _run(as_json, lambda svc, who: svc.pay(enrollment_id, pm, who))
    if as_json:
        emit_json(out)
        return
    typer.echo(
        f"{out['enrollment_id']}: enrolled, subscription {out['subscription_id']} is "
        f"{out['status']}\n  customer {out['customer_id']} (tenant {out['tenant_id']})\n"
        f"  first invoice {out['first_invoice_date'] or '-'}"
    )


@app.command("status")
def status(enrollment_id: str, as_json: bool = JsonOpt) -> None:
    """Where an enrollment stands (also once it has ended)."""
    view = _run(as_json, lambda svc, who: svc.status(enrollment_id, who))
    if as_json:
        emit_json(view)
        return
    _say_view(view)
    for step in view.timeline:
        code = f" {step.code}" if step.code else ""
        typer.echo(f"  {step.at.isoformat()}  {step.action:<22} {step.actor}  {step.outcome}{code}")
