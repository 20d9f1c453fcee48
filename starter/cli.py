"""The ``oms`` command line: operate subscriptions, inspect them, and run the local stack.

Every command prints a readable table, or with ``--json`` one JSON document for scripts. Errors exit
non-zero with ``error CODE: message`` on stderr (with ``--json``: ``{"error": {...}}`` on stdout).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any, TypeVar

import typer
from pydantic import ValidationError

from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT, Permission, Role
from models.money import format_money
from starter.access import Access
from starter.admin_cli import app as admin_app
from starter.admin_cli import whoami
from starter.enrollment_cli import app as enroll_app
from starter.intake_cli import app as intake_app
from starter.mail_cli import app as mail_app
from starter.output import JsonOpt, emit_json, fail, plain, run_access, set_token, table
from starter.quote import app as quote_app
from starter.service import SubscribeRequest, clocks_disabled
from starter.simulate import kpis as kpis_command
from starter.simulate import simulate as simulate_command
from starter.webhooks_cli import app as webhooks_app
from workers.config import load_config
from workers.logs import configure_logging

T = TypeVar("T")

app = typer.Typer(
    help="Subscription OMS: subscriptions as long-lived Temporal workflows.",
    no_args_is_help=True,
    add_completion=False,
)
dev_app = typer.Typer(
    help="Local development helpers (never for production).", no_args_is_help=True
)
app.add_typer(dev_app, name="dev")
dev_app.add_typer(mail_app)  # oms dev mail
app.add_typer(admin_app, name="admin")
app.add_typer(webhooks_app, name="webhooks")
app.command("whoami")(whoami)


@app.callback()
def _credentials(
    token: str = typer.Option(
        None,
        "--token",
        envvar="OMS_TOKEN",
        help="Act as this token's or API key's principal. On a dev stack without one: the dev "
        "operator.",
    ),
) -> None:
    """Subscription OMS: subscriptions as long-lived Temporal workflows."""
    set_token(token)


app.add_typer(quote_app, name="quote")
app.add_typer(intake_app, name="intake")
app.add_typer(enroll_app, name="enroll")


# --- commands ---------------------------------------------------------------------------


@app.command()
def catalog(as_json: bool = JsonOpt) -> None:
    """Show the plans: tiers, features, prices per currency and interval, trial days."""
    plans = default_catalog().plans
    if as_json:
        emit_json(
            [
                {
                    "plan_id": p.plan_id,
                    "name": p.name,
                    "tier": p.tier,
                    "kind": p.kind,
                    "segment": p.segment,
                    "description": p.description,
                    "trial_days": p.trial_days,
                    "features": p.features,
                    "intervals": [i.value for i in p.intervals],
                    "currencies": p.currencies,
                    "prices": [pr.model_dump(mode="json") for pr in p.prices],
                }
                for p in plans
            ]
        )
        return
    rows = []
    for p in plans:
        prices = ", ".join(
            f"{format_money(pr.amount_minor, pr.currency)}/{pr.interval.value}" for pr in p.prices
        )
        trial = f"{p.trial_days} days" if p.trial_days else "-"
        rows.append([p.plan_id, p.name, p.tier, trial, prices])
    table(rows, ["plan", "name", "tier", "trial", "prices"])
    typer.echo("")
    features = sorted({f for p in plans for f in p.features})
    table(
        [[f, *("x" if f in p.features else "" for p in plans)] for f in features],
        ["feature", *(p.plan_id for p in plans)],
    )


@app.command()
def subscribe(
    email: str = typer.Option(..., help="Customer e-mail address."),
    plan: str = typer.Option(..., help="Plan id (see `oms catalog`)."),
    payment_method: str = typer.Option(
        None, "--payment-method", help="Gateway payment method token (pm_...), never a card."
    ),
    interval: str = typer.Option("monthly", help="monthly, quarterly, yearly, weekly, ..."),
    currency: str = typer.Option("USD", help="ISO 4217 currency the plan is sold in."),
    trial_days: int = typer.Option(None, help="Trial length; defaults to the plan's."),
    quantity: int = typer.Option(1, help="Seats or units."),
    timezone: str = typer.Option(None, help="Billing time zone (IANA name); default UTC."),
    anchor_day: int = typer.Option(
        None, help="Bill on this day of the month; the first period is prorated."
    ),
    request_id: str = typer.Option(None, help="Idempotency key: a retry returns the first result."),
    clock: str = typer.Option(
        None, "--clock", help="Attach to this test clock (`oms clock create`); dev stacks only."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a subscription; waits until it is trialing, active or refused."""
    try:
        req = SubscribeRequest(
            email=email,
            plan_id=plan,
            interval=interval,
            currency=currency,
            payment_method_id=payment_method,
            trial_days=trial_days,
            quantity=quantity,
            timezone=timezone,
            anchor_day=anchor_day,
            request_id=request_id,
            clock_id=clock,
        )
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(x) for x in problem["loc"])
        fail(OmsError(ErrorCode.INVALID_REQUEST, f"{where}: {problem['msg']}"), as_json)
    if clock is None:
        result = run_access(as_json, lambda a: a.subscribe(req))
    else:
        result = run_clock_service(as_json, lambda a: a.subscribe(req))
    if as_json:
        emit_json(result)
        return
    table(
        [
            ["subscription", result.subscription_id],
            ["status", result.status.value],
            ["plan", f"{result.plan_id} ({result.interval.value})"],
            ["first invoice", result.first_invoice_date.isoformat()],
            ["first charge", format_money(result.first_charge_minor, result.currency)],
            ["trial ends", result.trial_end.isoformat() if result.trial_end else "-"],
        ],
        ["field", "value"],
    )


@app.command()
def status(subscription_id: str, as_json: bool = JsonOpt) -> None:
    """Show a subscription's live state."""
    view = run_access(as_json, lambda a: a.status(subscription_id))
    data = plain(view)
    if as_json:
        emit_json(data)
        return
    table([[k, v] for k, v in data.items()], ["field", "value"])


@app.command("list")
def list_(
    status: str = typer.Option(None, help="Only this status (active, trialing, past_due, ...)."),
    customer: str = typer.Option(None, help="Only this customer id."),
    plan: str = typer.Option(None, help="Only this plan id."),
    limit: int = typer.Option(100, help="At most this many, newest first."),
    as_json: bool = JsonOpt,
) -> None:
    """List subscriptions (from the database projection)."""

    async def go(a: Access) -> list[dict[str, Any]]:
        return a.list_subscriptions(status=status, customer_id=customer, plan_id=plan, limit=limit)

    rows = run_access(as_json, go)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            [
                r["subscription_id"],
                r["status"],
                r["plan_id"],
                r["interval"],
                format_money(r["unit_amount_minor"] * r["quantity"], r["currency"]),
                (r["next_billing_at"] or "-")[:16],
                r["customer_id"],
            ]
            for r in rows
        ],
        ["subscription", "status", "plan", "interval", "price", "next billing (UTC)", "customer"],
    )
    typer.echo(f"{len(rows)} subscription(s)")


@app.command()
def timeline(subscription_id: str, as_json: bool = JsonOpt) -> None:
    """Show the next scheduled events (notices, trial end, charges) with their instants."""
    tl = run_access(as_json, lambda a: a.timeline(subscription_id))
    if as_json:
        emit_json(tl)
        return
    table(
        [
            [
                e.at.isoformat(),
                e.kind,
                e.description,
                format_money(e.amount_minor, e.currency)
                if e.amount_minor is not None and e.currency
                else "",
            ]
            for e in tl.events
        ],
        ["at (UTC)", "event", "description", "amount"],
    )


@app.command()
def invoices(subscription_id: str, as_json: bool = JsonOpt) -> None:
    """List a subscription's invoices with their lines."""

    async def go(a: Access) -> list[dict[str, Any]]:
        return a.invoices(subscription_id)

    items = run_access(as_json, go)
    if as_json:
        emit_json(items)
        return
    rows = []
    for inv in items:
        rows.append(
            [
                inv["invoice_id"],
                f"{inv['period_start']}..{inv['period_end']}",
                inv["status"],
                format_money(inv["total_minor"], inv["currency"]),
            ]
        )
        for line in inv["lines"]:
            rows.append(
                [
                    "",
                    f"  {line['description']}",
                    "",
                    format_money(line["amount_minor"], line["currency"]),
                ]
            )
    table(rows, ["invoice", "period", "status", "total"])


@app.command()
def audit(
    subscription_id: str,
    limit: int = typer.Option(1000, help="At most this many entries, oldest first."),
    as_json: bool = JsonOpt,
) -> None:
    """Show a subscription's audit trail: who did what, through which channel, when."""

    async def go(a: Access) -> list[dict[str, Any]]:
        return a.audit(subscription_id, limit=limit)

    rows = run_access(as_json, go)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            [
                (r["occurred_at"] or "")[:19],
                r["action"],
                f"{r['from_status'] or ''} -> {r['to_status'] or ''}"
                if r["from_status"] != r["to_status"]
                else "",
                r["actor"],
                r["channel"],
                r["reason"] or "",
            ]
            for r in rows
        ],
        ["when (UTC)", "action", "status", "actor", "channel", "reason"],
    )


@app.command()
def cancel(
    subscription_id: str,
    now: bool = typer.Option(False, "--now", help="End service immediately."),
    at_period_end: bool = typer.Option(
        False, "--at-period-end", help="End when the current period ends (can be undone)."
    ),
    reason: str = typer.Option(None, help="Why (kept in the audit log)."),
    request_id: str = typer.Option(None, help="Idempotency key of this request."),
    as_json: bool = JsonOpt,
) -> None:
    """Cancel a subscription now or at the end of its period."""
    if now == at_period_end:
        fail(
            OmsError(ErrorCode.INVALID_REQUEST, "choose exactly one of --now or --at-period-end"),
            as_json,
        )
    result = run_access(
        as_json, lambda a: a.cancel(subscription_id, at_period_end, reason, request_id)
    )
    if as_json:
        emit_json(result)
        return
    when = "now" if not at_period_end else f"on {result.effective_date}"
    typer.echo(f"{subscription_id}: {result.status.value}, cancellation {when}")


@app.command()
def uncancel(
    subscription_id: str,
    as_json: bool = JsonOpt,
) -> None:
    """Withdraw a period-end cancellation before it takes effect."""
    result = run_access(as_json, lambda a: a.uncancel(subscription_id))
    if as_json:
        emit_json(result)
        return
    typer.echo(f"{subscription_id}: {result.status.value}, no cancellation scheduled")


@app.command()
def retry(
    subscription_id: str,
    as_json: bool = JsonOpt,
) -> None:
    """Retry now what a subscription that needs attention was refused (after fixing the cause).

    A refused billing step (shown by `oms status` as needs_attention with its code) is retried at
    once instead of on its back-off; a flag for a record that could not be written is cleared.
    """
    result = run_access(as_json, lambda a: a.retry(subscription_id))
    if as_json:
        emit_json(result)
        return
    view = result if isinstance(result, dict) else result.model_dump(mode="json")
    flagged = "still needs attention" if view.get("needs_attention") else "no attention needed"
    typer.echo(f"{subscription_id}: {view.get('status')}, {flagged}")


@app.command()
def change(
    subscription_id: str,
    plan: str = typer.Option(None, help="New plan id (default: keep)."),
    quantity: int = typer.Option(None, help="New quantity (default: keep)."),
    interval: str = typer.Option(None, help="New interval (default: keep)."),
    when: str = typer.Option(None, help="now or period-end (default: as the policy says)."),
    request_id: str = typer.Option(None, help="Idempotency key of this request."),
    as_json: bool = JsonOpt,
) -> None:
    """Change plan, quantity or interval: applied with proration, scheduled, or approved first."""
    result = run_access(
        as_json,
        lambda a: a.change(
            subscription_id,
            plan_id=plan,
            quantity=quantity,
            interval=interval,
            when=when,
            request_id=request_id,
        ),
    )
    if as_json:
        emit_json(result)
        return
    typer.echo(f"{result.outcome}: request {result.request_id}")
    if result.effective_date:
        typer.echo(f"effective {result.effective_date}")
    if result.approval_deadline:
        typer.echo(
            f"waits for {' then '.join(result.approver_groups)} until {result.approval_deadline}"
        )
    if result.lines:
        table(
            [[x.description, format_money(x.amount_minor, x.currency)] for x in result.lines],
            ["line", "amount"],
        )


@app.command()
def pending(subscription_id: str, as_json: bool = JsonOpt) -> None:
    """Scheduled changes and requests waiting for approval on a subscription."""
    view = run_access(as_json, lambda a: a.pending(subscription_id))
    if as_json:
        emit_json(view)
        return
    rows = [
        ["scheduled", c.request_id, f"-> {c.terms.plan_id} x{c.terms.quantity}", c.effective_date]
        for c in view.scheduled
    ]
    rows += [["approval", a.request_id, a.summary, a.deadline.isoformat()] for a in view.approvals]
    table(rows, ["kind", "request", "what", "when / deadline"])


@app.command()
def withdraw(
    subscription_id: str,
    request_id: str,
    as_json: bool = JsonOpt,
) -> None:
    """Withdraw a scheduled change or a request still waiting for approval."""
    view = run_access(as_json, lambda a: a.withdraw(subscription_id, request_id))
    if as_json:
        emit_json(view)
    else:
        typer.echo(f"withdrew {request_id}")


@app.command()
def pause(
    subscription_id: str,
    resume_on: str = typer.Option(None, help="First day of service again (YYYY-MM-DD)."),
    request_id: str = typer.Option(None, help="Idempotency key of this request."),
    as_json: bool = JsonOpt,
) -> None:
    """Pause service and charges, optionally until a date."""
    try:
        resume = date.fromisoformat(resume_on) if resume_on else None
    except ValueError:
        fail(
            OmsError(ErrorCode.INVALID_REQUEST, f"--resume-on {resume_on!r} is not a date"), as_json
        )
    result = run_access(as_json, lambda a: a.pause(subscription_id, resume, request_id))
    if as_json:
        emit_json(result)
    else:
        typer.echo(f"{subscription_id}: {result.outcome}, {result.status.value}")


@app.command()
def resume(
    subscription_id: str,
    as_json: bool = JsonOpt,
) -> None:
    """Resume a paused subscription today."""
    result = run_access(as_json, lambda a: a.resume(subscription_id))
    if as_json:
        emit_json(result)
    else:
        typer.echo(
            f"{subscription_id}: {result.status.value}, next billing {result.next_billing_date}"
        )


@app.command("payment-method")
def payment_method(
    subscription_id: str,
    payment_method_id: str = typer.Argument(..., help="The new card's token (pm_...)."),
    as_json: bool = JsonOpt,
) -> None:
    """Replace the card; anything unpaid is retried with it at once."""
    result = run_access(
        as_json, lambda a: a.update_payment_method(subscription_id, payment_method_id)
    )
    if as_json:
        emit_json(result)
    else:
        retried = "retried unpaid invoices" if result.retried else "nothing to retry"
        typer.echo(f"{subscription_id}: {result.status.value}, {retried}")


clock_app = typer.Typer(
    help="Test clocks: move subscriptions through months in seconds (dev and test stacks only).",
    no_args_is_help=True,
)
app.add_typer(clock_app, name="clock")


def run_clock_service(as_json: bool, action: Callable[[Access], Awaitable[T]]) -> T:
    """``run_access`` with test clocks as the configuration says (temporal.test_clocks /
    OMS_TEST_CLOCKS); refused before connecting anywhere when they are off. Needs the
    clocks:manage permission (operators)."""
    config = load_config()
    if not config.temporal.test_clocks:
        fail(clocks_disabled(), as_json)

    async def go(a: Access) -> T:
        a.require(Permission.CLOCKS_MANAGE)
        a.service.test_clocks = True
        return await action(a)

    return run_access(as_json, go, config)


@clock_app.command("create")
def clock_create(
    at: str = typer.Option(
        None, "--at", help="Start time, ISO date or date-time (UTC); now or later. Default: now."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a test clock; prints its id (with --json: its id and time)."""
    from starter.clock import parse_at

    if not load_config().temporal.test_clocks:
        fail(clocks_disabled(), as_json)  # refused before judging the request
    try:
        start = parse_at(at) if at is not None else None
    except OmsError as err:
        fail(err, as_json)
    view = run_clock_service(as_json, lambda a: a.service.create_clock(start))
    out = view.to_json()
    if as_json:
        emit_json({"clock_id": out["clock_id"], "now": out["now"]})
    else:
        typer.echo(out["clock_id"])  # alone, for CLK=$(oms clock create ...)


@clock_app.command("now")
def clock_now(clock_id: str, as_json: bool = JsonOpt) -> None:
    """Show a test clock's current time (it runs at wall-clock speed between advances)."""
    view = run_clock_service(as_json, lambda a: a.service.clock(clock_id))
    now = view.to_json()["now"]
    if as_json:
        emit_json({"now": now})
    else:
        typer.echo(now)


@clock_app.command("advance")
def clock_advance(
    clock_id: str,
    duration: str = typer.Argument(..., help="Nh, Nd or Nmo (calendar months), e.g. 1mo."),
    as_json: bool = JsonOpt,
) -> None:
    """Move a test clock forward; returns once every subscription on it has caught up."""
    result = run_clock_service(as_json, lambda a: a.service.advance_clock(clock_id, duration))
    out = result.to_json()
    if as_json:
        emit_json(out)
    else:
        typer.echo(f"{clock_id}: now {out['now']} ({out['workflows']} subscription(s) on it)")


approvals_app = typer.Typer(help="Requests waiting for an approver.", no_args_is_help=True)
app.add_typer(approvals_app, name="approvals")


@approvals_app.command("list")
def approvals_list(
    status: str = typer.Option("pending", help="pending, approved, rejected, expired, ..."),
    as_json: bool = JsonOpt,
) -> None:
    """List approval requests with their deadlines (an approver sees those of its groups)."""

    async def go(a: Access) -> list[dict[str, Any]]:
        return a.approvals(status=status)

    rows = run_access(as_json, go)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            [
                r["request_id"],
                r["subscription_id"],
                r["kind"],
                r["summary"],
                r["deadline"],
                ",".join(r["groups"]),
                "yes" if r["escalated"] else "",
            ]
            for r in rows
        ],
        ["request", "subscription", "kind", "summary", "deadline", "groups", "escalated"],
    )


@approvals_app.command("show")
def approvals_show(request_id: str, as_json: bool = JsonOpt) -> None:
    """Show one approval request."""

    async def go(a: Access) -> dict[str, Any]:
        return a.approval(request_id)

    row = run_access(as_json, go)
    if as_json:
        emit_json(row)
    else:
        table([[k, v] for k, v in row.items()], ["field", "value"])


def _decide(request_id: str, approve: bool, reason: str, as_json: bool) -> None:
    result = run_access(as_json, lambda a: a.decide(request_id, approve=approve, reason=reason))
    if as_json:
        emit_json(result)
    else:
        typer.echo(f"{request_id}: {result.status}")


@approvals_app.command("approve")
def approvals_approve(
    request_id: str,
    reason: str = typer.Option(..., help="Why (kept in the audit log)."),
    as_json: bool = JsonOpt,
) -> None:
    """Approve a request as the authenticated approver (OMS_TOKEN / --token): the change,
    cancellation or pause is carried out."""
    _decide(request_id, True, reason, as_json)


@approvals_app.command("reject")
def approvals_reject(
    request_id: str,
    reason: str = typer.Option(..., help="Why (kept in the audit log)."),
    as_json: bool = JsonOpt,
) -> None:
    """Reject a request as the authenticated approver: nothing changes."""
    _decide(request_id, False, reason, as_json)


@dev_app.command("card")
def dev_card(
    number: str = typer.Argument(..., help="A test card number, e.g. 4242424242424242."),
    as_json: bool = JsonOpt,
) -> None:
    """Tokenize a TEST card at the local gateway and print its pm_... id (refuses live keys)."""
    from activities.gateway import StripeGateway

    config = load_config()
    key = config.gateway.api_key
    if not key:
        fail(OmsError(ErrorCode.LIVE_KEY_REFUSED, "no gateway key configured"), as_json)
    try:
        pm = StripeGateway(key, api_base=config.gateway.api_base).create_test_payment_method(number)
    except OmsError as err:
        fail(err, as_json)
    except Exception as err:  # the gateway is down: say so without a traceback
        fail(OmsError(ErrorCode.GATEWAY_UNAVAILABLE, f"gateway error: {err}"), as_json)
    if as_json:
        emit_json({"payment_method_id": pm})
    else:
        typer.echo(pm)


@dev_app.command("token")
def dev_token(
    role: str = typer.Option(..., help="customer, operator, approver, partner, service or admin."),
    tenant: str = typer.Option(DEFAULT_TENANT, help="The principal's tenant."),
    customer: str = typer.Option(None, help="A customer's own customer id (role customer)."),
    groups: str = typer.Option(
        None, help="An approver's groups, comma-separated (default: the policy's for its id)."
    ),
    partner: str = typer.Option(None, help="A partner's id (role partner)."),
    accounts: str = typer.Option(None, help="Accounts it may bill, comma-separated."),
    principal: str = typer.Option(None, help="The principal id (default: dev-<role>)."),
    email: str = typer.Option(
        None, help="Where notices to it go (default for an approver: <id>@oms.localhost)."
    ),
) -> None:
    """Print a token for a dev principal (written to the principal store); only the token.

    Refused where a production signing key is configured: dev tokens exist on dev stacks only.
    """
    from activities.auth_store import AuthStore
    from activities.db import create_db_engine
    from models.policy import default_policy
    from starter.auth import Authenticator, dev_credentials_allowed, dev_principal

    config = load_config()
    try:
        if not dev_credentials_allowed(config.auth):
            raise OmsError(
                ErrorCode.FORBIDDEN,
                "dev tokens are refused here: a production signing key is configured (ask an "
                "admin for a token: oms admin token PRINCIPAL)",
            )
        try:
            kind = Role(role)
        except ValueError:
            raise OmsError(
                ErrorCode.INVALID_REQUEST, f"unknown role {role!r}; use one of {', '.join(Role)}"
            ) from None
        member_of = _split(groups)
        if kind == Role.APPROVER and groups is None and principal:
            directory = default_policy().approver_groups
            member_of = tuple(g for g, members in directory.items() if principal in members)
        p = dev_principal(
            kind,
            principal_id=principal,
            tenant_id=tenant,
            customer_id=customer,
            groups=member_of,
            partner_id=partner,
            accounts=_split(accounts),
        )
        if email or kind == Role.APPROVER:
            p = p.model_copy(update={"email": email or f"{p.id}@oms.localhost"})
        engine = create_db_engine(config.database.url)
        try:
            store = AuthStore(engine)
            token = Authenticator(config.auth, store).issue(store.put_principal(p))
        finally:
            engine.dispose()
    except OmsError as err:
        fail(err, False)
    typer.echo(token)


def _split(values: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (values or "").split(",") if v.strip())


@dev_app.command("up")
def dev_up() -> None:
    """Run the whole local stack (Temporal + Web UI, localstripe, worker, API)."""
    from starter.devstack import run

    raise typer.Exit(run(load_config()))


app.command("simulate")(simulate_command)
app.command("kpis")(kpis_command)


@app.command()
def worker() -> None:
    """Run a worker (the same as `python -m workers.main`)."""
    from workers.main import main as worker_main

    worker_main()


@app.command()
def migrate() -> None:
    """Apply the database migrations (the same as `python -m workers.migrate`)."""
    from workers.migrate import main as migrate_main

    raise typer.Exit(migrate_main([]))


def main() -> None:
    # stdout is the command's own output; library logs go to stderr, warnings and up only.
    configure_logging(level=os.environ.get("OMS_LOG_LEVEL", "WARNING"), json=False)
    code = 0
    try:
        app()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    # Skip interpreter teardown: the Temporal client's Rust threads can abort CPython's
    # finalization of a short-lived process ("PyGILState_Release: thread state must be current",
    # temporalio/sdk-python#300), turning a finished command into a crash. Everything the
    # command owns (DB engine, client) is closed by then; only flush our output.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
