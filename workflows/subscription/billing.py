"""Billing and collection: period invoices, charges, request invoices, credit and refunds.

Every outcome of a charge is written down here:

* succeeded: the invoice is paid;
* declined (by the issuer, or a request the gateway refuses such as a detached card): a result,
  handed to dunning (or, for a change, the change is refused and its credit restored);
* processing: the invoice waits and is polled with back-off, never treated as a decline;
* an outage, a rate limit or a rotated key: retried inside the activity for as long as it lasts;
* a total above zero but below the gateway's minimum: never sent; carried to the next invoice.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import date, timedelta

from temporalio import workflow

from workflows.subscription.calls import Refused
from workflows.subscription.context import Status, Sub

with workflow.unsafe.imports_passed_through():
    from models.billing import (
        allocate_refund,
        below_gateway_minimum,
        billed_span,
        period_lines,
    )
    from models.ids import (
        change_invoice_id,
        invoice_id,
        payment_idempotency_key,
        request_idempotency_key,
        request_kind,
    )
    from models.invoice import InvoiceLine, LineKind, compose_invoice
    from models.subscription import (
        BilledPeriod,
        ChargeRequest,
        ChargeResult,
        CreditEntry,
        InvoiceDraft,
        InvoiceSettlement,
        OpenInvoice,
        PaymentRef,
        RefundRequest,
    )
    from models.vocabulary import AuditAction, InvoiceStatus

POLL_FIRST = timedelta(minutes=1)
POLL_MAX = timedelta(hours=6)


@dataclass
class Collection:
    """How a collection pass ended."""

    paid: list[OpenInvoice] = field(default_factory=list)
    declined: tuple[OpenInvoice, ChargeResult] | None = None
    processing: bool = False
    stopped: bool = False  # an immediate cancellation is waiting: nothing more was charged

    @property
    def all_paid(self) -> bool:
        return self.declined is None and not self.processing and not self.stopped


@dataclass
class RequestMoney:
    """What a request's invoice moved."""

    invoice_id: str | None = None
    intent_id: str | None = None  # the card payment, when something was charged
    charged_minor: int = 0
    refunded_minor: int = 0
    credited_minor: int = 0
    declined: ChargeResult | None = None
    refused: bool = False  # an activity refused the request before money moved


class Billing:
    """Invoices and charges of one subscription; always called under the state lock."""

    def __init__(self, sub: Sub) -> None:
        self.sub = sub

    # --- period invoices ---------------------------------------------------------------------

    async def issue_period_invoice(self) -> OpenInvoice:
        """Invoice the next period (account credit first, a carried amount added) and move on."""
        sub, st = self.sub, self.sub.st
        n = st.period_index
        span, period = billed_span(st.anchor, st.terms.interval, n, sub.billing_start())
        lines = period_lines(
            anchor=st.anchor,
            interval=st.terms.interval,
            n=n,
            billing_start=sub.billing_start(),
            currency=st.terms.currency,
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
            description=f"{st.terms.plan_name} ({st.terms.interval.value})",
        )
        carried = st.carried_minor
        if carried:
            lines.append(
                InvoiceLine(
                    kind=LineKind.BALANCE_CARRIED,
                    description="balance carried from an earlier invoice below the minimum charge",
                    amount_minor=carried,
                    currency=st.terms.currency,
                )
            )
        composed = compose_invoice(
            currency=st.terms.currency, lines=lines, account_credit_minor=st.account_credit_minor
        )
        draft = InvoiceDraft(
            invoice_id=invoice_id(st.subscription_id, n, st.schedule),
            kind="period" if st.schedule == 0 else f"period-s{st.schedule}",
            subscription_id=st.subscription_id,
            customer_id=st.customer_id,
            period_index=n,
            period_start=span[0],
            period_end=span[1],
            currency=st.terms.currency,
            lines=composed.lines,
            subtotal_minor=composed.subtotal_minor,
            credit_applied_minor=composed.credit_applied_minor,
            total_minor=composed.total_minor,
            issued_at=workflow.now(),
        )
        await sub.calls.write_invoice(draft)
        await self.consume_credit(composed.credit_applied_minor, draft.invoice_id)
        # The state moves only once the invoice is durable: a refused write leaves it unbilled.
        st.carried_minor = 0
        st.period_index = n + 1
        st.billed = BilledPeriod(
            start=span[0],
            end=span[1],
            period_start=period[0],
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
            billed_minor=sum(x.amount_minor for x in lines if x.kind != LineKind.BALANCE_CARRIED),
            invoice_id=draft.invoice_id,
        )
        inv = OpenInvoice(
            invoice_id=draft.invoice_id,
            period_index=n,
            amount_minor=draft.total_minor,
            period_start=span[0],
            period_end=span[1],
            credit_applied_minor=composed.credit_applied_minor,
            schedule=st.schedule,
        )
        st.open_invoices.append(inv)
        return inv

    # --- collection ----------------------------------------------------------------------------

    async def collect(self) -> Collection:
        """Charge the open invoices oldest first until one is declined or still processing."""
        st = self.sub.st
        out = Collection()
        while st.open_invoices:
            inv = st.open_invoices[0]
            if self.sub.cancels_waiting:
                out.stopped = True  # an accepted cancel-now comes first: charge nothing more
                return out
            if inv.processing_key is not None:
                result = await self.poll(inv)
            elif inv.amount_minor == 0 or below_gateway_minimum(
                inv.amount_minor, st.terms.currency
            ):
                result = None
            else:
                result = await self.charge(inv)
            if result is not None and result.processing:
                out.processing = True
                return out
            if result is not None and not result.succeeded:
                out.declined = (inv, result)
                return out
            await self.mark_paid(inv, result)
            out.paid.append(inv)
        return out

    def _key(self, inv: OpenInvoice) -> str:
        """The idempotency key of ``inv``'s next attempt: it changes only after a decline.

        So a charge that succeeded but whose settlement was refused (or lost with a killed
        worker) is asked again under the same key and answers "succeeded" from the record: the
        customer is never charged twice for one invoice.
        """
        st, attempt = self.sub.st, inv.attempts
        if inv.charge_key:
            return f"{inv.charge_key}:{attempt}" if attempt else inv.charge_key
        return payment_idempotency_key(st.subscription_id, inv.period_index, attempt, inv.schedule)

    async def charge(self, inv: OpenInvoice) -> ChargeResult:
        """One charge attempt of ``inv``."""
        key = self._key(inv)
        result = await self.sub.calls.charge(self._charge_request(inv, key, inv.attempts))
        self._after(inv, key, result)
        return result

    def _after(self, inv: OpenInvoice, key: str, result: ChargeResult) -> None:
        if result.processing:
            if inv.processing_key != key:
                inv.processing_key = key
                inv.polls = 0
            else:
                inv.polls += 1
            delay = min(POLL_FIRST * (2**inv.polls), POLL_MAX)
            inv.next_poll_at = workflow.now() + delay
            return
        inv.processing_key = None
        inv.next_poll_at = None
        if not result.succeeded:
            inv.attempts += 1  # the next attempt gets a new key (a gateway replays declines)

    async def settle_processing(self) -> None:
        """Wait for every charge still processing to settle (paid, or declined for dunning)."""
        for inv in list(self.sub.st.open_invoices):
            if inv.processing_key is not None:
                result = await self.until_settled(inv)
                if result.succeeded:
                    await self.mark_paid(inv, result)

    async def until_settled(
        self, inv: OpenInvoice, result: ChargeResult | None = None
    ) -> ChargeResult:
        """Poll ``inv``'s processing charge on its back-off until the gateway settles it."""
        while result is None or result.processing:
            assert inv.next_poll_at is not None
            if inv.next_poll_at > workflow.now():
                await workflow.sleep(inv.next_poll_at - workflow.now())
            result = await self.poll(inv)
        return result

    async def poll(self, inv: OpenInvoice) -> ChargeResult:
        """Look again at a processing charge; schedule the next look with back-off if still so."""
        key = inv.processing_key
        assert key is not None
        result = await self.sub.calls.refresh_charge(self._charge_request(inv, key, inv.attempts))
        self._after(inv, key, result)
        return result

    def _charge_request(self, inv: OpenInvoice, key: str, attempt: int) -> ChargeRequest:
        st = self.sub.st
        assert st.gateway_customer_id is not None
        return ChargeRequest(
            idempotency_key=key,
            invoice_id=inv.invoice_id,
            subscription_id=st.subscription_id,
            customer_id=st.customer_id,
            gateway_customer_id=st.gateway_customer_id,
            payment_method_id=st.payment_method_id,
            amount_minor=inv.amount_minor,
            currency=st.terms.currency,
            attempt=attempt,
            description=f"{st.terms.plan_name} {inv.period_start.isoformat()}",
        )

    async def mark_paid(self, inv: OpenInvoice, result: ChargeResult | None) -> None:
        """Settle ``inv`` as paid (a total below the minimum is carried to the next invoice)."""
        st = self.sub.st
        await self.settle(inv.invoice_id, InvoiceStatus.PAID, result.intent_id if result else None)
        if result is None and below_gateway_minimum(inv.amount_minor, st.terms.currency):
            st.carried_minor += inv.amount_minor
        st.open_invoices.remove(inv)
        billed = st.billed
        if billed is not None and billed.invoice_id == inv.invoice_id:
            billed.invoice_id = None  # paid: the period can be credited now
            if result is not None and result.intent_id:
                billed.payments.append(
                    PaymentRef(intent_id=result.intent_id, amount_minor=inv.amount_minor)
                )
        st.paid_through = max(st.paid_through or inv.period_end, inv.period_end)

    async def settle(self, invoice: str, status: str, intent_id: str | None = None) -> None:
        await self.sub.calls.settle_invoice(
            InvoiceSettlement(invoice_id=invoice, status=status, payment_intent_id=intent_id)
        )

    async def void(self, inv: OpenInvoice, status: str = InvoiceStatus.VOID) -> None:
        """Close an unpaid invoice (void or uncollectible); a void one gives its credit back."""
        st = self.sub.st
        await self.settle(inv.invoice_id, status)
        if status == InvoiceStatus.VOID and inv.credit_applied_minor:
            await self.grant_credit(
                inv.credit_applied_minor,
                inv.invoice_id,
                "credit restored: invoice voided",
                "restore",
            )
        if inv in st.open_invoices:
            st.open_invoices.remove(inv)

    # --- request invoices (changes, cancellations, fees) --------------------------------------

    async def settle_request_lines(
        self,
        request_id: str,
        lines: list[InvoiceLine],
        *,
        refund: bool,
        on_decline: str = InvoiceStatus.VOID,
    ) -> RequestMoney:
        """Invoice a request's lines: charge what is owed, refund or credit what is given back.

        A declined charge closes the invoice (``on_decline``: void, or uncollectible for a fee that
        goes to collections) and restores the credit it consumed; the caller decides what the
        decline means (a change is refused, a fee goes to collections).
        """
        sub, st = self.sub, self.sub.st
        money = RequestMoney()
        if not lines:
            return money
        subtotal = sum(x.amount_minor for x in lines)
        composed = compose_invoice(
            currency=st.terms.currency,
            lines=lines,
            account_credit_minor=st.account_credit_minor if subtotal > 0 else 0,
        )
        retry = st.declined_requests.get(request_id, 0)
        inv_id = change_invoice_id(st.subscription_id, request_id) + (f"-{retry}" if retry else "")
        today = sub.today()
        await sub.calls.write_invoice(
            InvoiceDraft(
                invoice_id=inv_id,
                kind=request_kind(request_id) + (f"-{retry}" if retry else ""),
                subscription_id=st.subscription_id,
                customer_id=st.customer_id,
                period_index=st.period_index,
                period_start=today,
                period_end=max(today, st.billed.end if st.billed else today),
                currency=st.terms.currency,
                lines=composed.lines,
                subtotal_minor=composed.subtotal_minor,
                credit_applied_minor=composed.credit_applied_minor,
                total_minor=composed.total_minor,
                issued_at=workflow.now(),
            )
        )
        money.invoice_id = inv_id
        await self.consume_credit(composed.credit_applied_minor, inv_id)
        inv = OpenInvoice(
            invoice_id=inv_id,
            period_index=st.period_index,
            amount_minor=composed.total_minor,
            period_start=today,
            period_end=today,
            charge_key=request_idempotency_key(st.subscription_id, request_id, "charge")
            + (f":{retry}" if retry else ""),
            credit_applied_minor=composed.credit_applied_minor,
        )
        if composed.total_minor > 0 and not below_gateway_minimum(
            composed.total_minor, st.terms.currency
        ):
            try:
                result = await self.charge(inv)
                if result.processing:
                    # A request's charge is short-lived: wait for it here (the lock is held,
                    # so nothing else moves money for this subscription meanwhile).
                    result = await self.until_settled(inv, result)
            except Refused:
                await self._abandon(inv, request_id, retry, InvoiceStatus.VOID)
                raise
            if not result.succeeded:
                await self._abandon(inv, request_id, retry, on_decline)
                money.declined = result
                return money
            # The money moved: from here on the request completes whatever a record write
            # does (a refused write is flagged for an operator, never undone by an error).
            money.intent_id = result.intent_id
            money.charged_minor = composed.total_minor
            if st.billed is not None and result.intent_id:
                st.billed.payments.append(
                    PaymentRef(intent_id=result.intent_id, amount_minor=composed.total_minor)
                )
            await self._completing(
                self.settle(inv_id, InvoiceStatus.PAID, result.intent_id), "settle"
            )
        else:
            if composed.total_minor > 0:
                st.carried_minor += composed.total_minor  # below the minimum: carried
            await self.settle(inv_id, InvoiceStatus.PAID)
        owed_back = max(0, -subtotal)
        if owed_back and refund:
            refunded = await self.refund(owed_back, request_id, inv_id)
            money.refunded_minor = refunded
            owed_back -= refunded
        if owed_back:
            granted = await self._completing(
                self.grant_credit(owed_back, inv_id, f"request {request_id}", "grant"),
                f"credit {owed_back} {st.terms.currency}",
            )
            money.credited_minor = owed_back if granted else 0
        return money

    async def settle_request_lines_or_flag(
        self,
        request_id: str,
        lines: list[InvoiceLine],
        *,
        refund: bool,
        on_decline: str = InvoiceStatus.VOID,
    ) -> RequestMoney:
        """:meth:`settle_request_lines` for a step that must complete (a cancellation): a refusal
        is flagged for an operator (NeedsAttention) instead of raised."""
        try:
            return await self.settle_request_lines(
                request_id, lines, refund=refund, on_decline=on_decline
            )
        except Refused as err:
            self.sub.flag(err, f"request:{request_id}", blocking=False)
            return RequestMoney(refused=True)

    async def _abandon(self, inv: OpenInvoice, request_id: str, retry: int, status: str) -> None:
        """A request's charge did not happen: close its invoice, give its credit back, and let a
        retry of the same request start afresh (new invoice and charge keys)."""
        st = self.sub.st
        st.declined_requests[request_id] = retry + 1
        _trim(st.declined_requests)
        await self._completing(self.settle(inv.invoice_id, status), f"close {inv.invoice_id}")
        if inv.credit_applied_minor:
            await self._completing(
                self.grant_credit(
                    inv.credit_applied_minor,
                    inv.invoice_id,
                    "credit restored: the payment did not happen",
                    "restore",
                ),
                f"restore credit {inv.credit_applied_minor}",
            )

    async def _completing(self, write: Awaitable[None], what: str) -> bool:
        """A record write after money moved: False (and NeedsAttention) if it is refused."""
        try:
            await write
        except Refused as err:
            self.sub.flag(err, f"record:{what}", blocking=False)
            return False
        return True

    async def refund(self, amount_minor: int, request_id: str, inv_id: str) -> int:
        """Refund up to ``amount_minor`` over the period's card payments, newest first.

        Each refund stays within what its payment has left; a refund the gateway refuses is not
        retried: its amount is returned (the caller credits it to the balance instead).
        """
        st = self.sub.st
        if st.billed is None:
            return 0
        payments = st.billed.payments
        plan, _ = allocate_refund(
            amount_minor, [(p.intent_id, p.refundable_minor) for p in payments]
        )
        refunded = 0
        for i, (intent_id, amount) in enumerate(plan):
            try:
                result = await self.sub.calls.refund(
                    RefundRequest(
                        idempotency_key=request_idempotency_key(
                            st.subscription_id, request_id, f"refund-{i}" if i else "refund"
                        ),
                        subscription_id=st.subscription_id,
                        invoice_id=inv_id,
                        intent_id=intent_id,
                        amount_minor=amount,
                        currency=st.terms.currency,
                        reason=f"request {request_id}"[:200],
                    )
                )
            except Refused as err:
                workflow.logger.warning(
                    "refund refused; credited instead",
                    extra={"code": err.code, "intent": intent_id},
                )
                continue
            for p in payments:
                if p.intent_id == intent_id:
                    p.refunded_minor += result.amount_minor
            refunded += result.amount_minor
        return refunded

    # --- credit ---------------------------------------------------------------------------

    async def consume_credit(self, amount_minor: int, invoice: str) -> None:
        if amount_minor <= 0:
            return
        await self._record_credit(-amount_minor, invoice, "applied to invoice", "apply")

    async def grant_credit(self, amount_minor: int, invoice: str, reason: str, kind: str) -> None:
        if amount_minor <= 0:
            return
        await self._record_credit(amount_minor, invoice, reason, kind)

    async def _record_credit(self, amount_minor: int, invoice: str, reason: str, kind: str) -> None:
        """Write the ledger entry, then move the balance (the two always agree)."""
        st = self.sub.st
        balance = st.account_credit_minor + amount_minor
        await self.sub.calls.record_credit(
            CreditEntry(
                entry_key=f"{st.subscription_id}:{invoice}:{kind}",
                customer_id=st.customer_id,
                subscription_id=st.subscription_id,
                amount_minor=amount_minor,
                currency=st.terms.currency,
                balance_after_minor=balance,
                reason=reason[:200],
                invoice_id=invoice,
            )
        )
        st.account_credit_minor = balance


def _trim(d: dict[str, int], keep: int = 100) -> None:
    while len(d) > keep:
        d.pop(next(iter(d)))


def status_after_payment(recovering: bool, status: Status) -> AuditAction:
    """The audit action of a paid invoice: recovered, renewed or activated."""
    if recovering:
        return AuditAction.RECOVERED
    if status == Status.active:
        return AuditAction.RENEWED
    return AuditAction.ACTIVATED


def unused_from(billed: BilledPeriod, today: date) -> bool:
    """Whether ``today`` falls inside the served span (something is left to credit)."""
    return billed.start <= today < billed.end
