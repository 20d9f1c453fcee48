"""The system's words: audit actions and the statuses of invoices, payments and approvals.

One ``StrEnum`` per kind, used where the word is written (the workflow, the store) and where it is
read (KPIs, reconciliation, the API), so a renamed word cannot silently stop being counted. The
values are stored in the database and shown in audit trails: existing ones never change meaning.
Error codes are in ``models.errors``; subscription statuses in ``models.subscription``.
"""

from __future__ import annotations

from enum import StrEnum


class AuditAction(StrEnum):
    """What an audit row records (``audit_log.action``)."""

    CREATED = "created"
    CREATION_FAILED = "creation_failed"
    ACTIVATED = "activated"  # the first invoice (or the first after a trial) is paid
    RENEWED = "renewed"
    RECOVERED = "recovered"  # paid after dunning
    PAYMENT_FAILED = "payment_failed"
    MARKED_UNPAID = "marked_unpaid"
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    CHANGE_APPLIED = "change_applied"
    CHANGE_SCHEDULED = "change_scheduled"
    CHANGE_WITHDRAWN = "change_withdrawn"
    CANCEL_SCHEDULED = "cancel_scheduled"
    CANCEL_WITHDRAWN = "cancel_withdrawn"
    CANCELED = "canceled"
    FEE_TO_COLLECTIONS = "fee_to_collections"
    PAUSED = "paused"
    RESUMED = "resumed"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_REMINDED = "approval_reminded"
    APPROVAL_ESCALATED = "approval_escalated"
    APPROVAL_APPROVED = "approval_approved"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"
    APPROVAL_WITHDRAWN = "approval_withdrawn"
    APPROVAL_SUPERSEDED = "approval_superseded"
    APPROVAL_FAILED = "approval_failed"  # approved, but it could no longer be carried out
    APPROVAL_CANCELED = "approval_canceled"  # still pending when the subscription ended
    NEEDS_ATTENTION = "needs_attention"
    ATTENTION_CLEARED = "attention_cleared"


# Audit actions that mean "an invoice of this subscription was paid".
PAID_ACTIONS = frozenset({AuditAction.ACTIVATED, AuditAction.RENEWED, AuditAction.RECOVERED})


class InvoiceStatus(StrEnum):
    OPEN = "open"
    PAID = "paid"
    VOID = "void"  # never collected; its credit given back
    UNCOLLECTIBLE = "uncollectible"  # a debt that stays on record


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    CANCELED = "canceled"
