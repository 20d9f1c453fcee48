"""Identifiers derived from business keys: workflow ids, invoice ids, idempotency keys.

Everything that must be the same on a retry (days later, after a crash, after continue-as-new) is
derived here from stable business identifiers, never from random values or run ids.
"""

from __future__ import annotations

import hashlib
import re

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{3,64}$")


def subscription_workflow_id(subscription_id: str) -> str:
    """Workflow id of a subscription: ``subscription:{id}``."""
    return f"subscription:{subscription_id}"


def enrollment_workflow_id(enrollment_id: str) -> str:
    """Workflow id of an enrollment: ``enrollment:{id}``."""
    return f"enrollment:{enrollment_id}"


def subscription_id_from_workflow_id(workflow_id: str) -> str:
    """Inverse of :func:`subscription_workflow_id`."""
    prefix = "subscription:"
    if not workflow_id.startswith(prefix):
        raise ValueError(f"{workflow_id!r} is not a subscription workflow id")
    return workflow_id[len(prefix) :]


def is_valid_id(value: str) -> bool:
    """True for ids safe to embed in workflow ids, keys and URLs."""
    return bool(_ID_RE.match(value))


def _digest(*parts: str, length: int = 20) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def customer_id_for_email(email: str) -> str:
    """A stable customer id for an e-mail address (no PII in the id itself)."""
    return "cust_" + _digest("customer", email.strip().lower())


def subscription_id_for_request(request_id: str) -> str:
    """The subscription id a create request maps to, so a retried request finds its subscription."""
    return "sub_" + _digest("subscription", request_id, length=16)


def invoice_id(subscription_id: str, period_index: int, schedule: int = 0) -> str:
    """The invoice of a subscription's billing period ``n`` (one per period).

    ``schedule`` counts billing schedules: it grows when an interval change restarts the period
    numbering, so ids of the new schedule never collide with earlier ones.
    """
    prefix = f"s{schedule}" if schedule else ""
    return f"in_{subscription_id}_{prefix}p{period_index}"


def change_invoice_id(subscription_id: str, request_id: str) -> str:
    """The invoice of a mid-period change or cancellation request."""
    return f"in_{subscription_id}_r{_digest('request', request_id, length=12)}"


def request_kind(request_id: str) -> str:
    """The invoices table's ``kind`` of a request's invoice (short, unique per request)."""
    return "r" + _digest("request", request_id, length=12)


def payment_idempotency_key(
    subscription_id: str, period_index: int, attempt: int, schedule: int = 0
) -> str:
    """Key for one charge attempt of one period: stable across retries and continue-as-new.

    A new dunning attempt (hours or days later, maybe with a new card) gets a new ``attempt`` so the
    gateway does not replay an old decline; a transport retry of the same attempt reuses the key.
    """
    prefix = f"s{schedule}:" if schedule else ""
    return f"{subscription_id}:{prefix}period-{period_index}:attempt-{attempt}"


def request_idempotency_key(subscription_id: str, request_id: str, what: str) -> str:
    """Key for money moved by one request (``charge``, ``refund``): stable across retries."""
    return f"{subscription_id}:request-{_digest('request', request_id, length=16)}:{what}"
