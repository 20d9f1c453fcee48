"""The access matrix as data: who calls, every route, what each caller must get.

A :class:`Route` names its template (as ``create_app`` lists it), the permission it needs, the
objects it reads (whose tenant and customer decide visibility) and what each role that holds the
permission gets. :func:`expand` derives the refusals from ``models/data/roles.yaml``:

- anonymous: 401 ``UNAUTHENTICATED``;
- every role of tenant A without the permission: 403 ``FORBIDDEN``;
- on an object route, every principal that holds the permission but may not see the object (a
  principal of tenant B, a customer of tenant B with the same customer id, another customer of
  tenant A): 404 ``NOT_FOUND``, exactly as for an id nobody has.

Used by ``tests/workflows/test_access_matrix.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from models.identity import Permission, Role, role_permissions

TENANT_A = "mx-tenant-a"
TENANT_B = "mx-tenant-b"
APPROVER_GROUP = "billing-approvers"

# The only routes anyone may call without credentials.
PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/health/live"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
    }
)

ANONYMOUS = "anonymous"
STRIPE = "stripe"  # a caller with a valid Stripe-Signature for its body
STRIPE_SIGNATURE = "stripe-signature"
NO_BODY: Any = object()
Values = dict[str, str]  # this run's ids: {"sub": "sub_...", "approval": ..., ...}
Check = Callable[[Any, Values], bool]  # on the JSON answer


@dataclass(frozen=True)
class Member:
    """A principal of the cast: its name is its id in the principal store."""

    name: str
    role: Role
    tenant_id: str
    customer: str | None = None  # "target": the customer of the subscription under test
    groups: tuple[str, ...] = ()
    partner_id: str | None = None
    accounts: tuple[str, ...] = ()


# Tenant A: one principal per role (the customer owns the subscription under test).
INSIDERS: dict[Role, Member] = {
    Role.CUSTOMER: Member("mx-customer-a", Role.CUSTOMER, TENANT_A, customer="target"),
    Role.OPERATOR: Member("mx-operator-a", Role.OPERATOR, TENANT_A),
    Role.APPROVER: Member("mx-approver-a", Role.APPROVER, TENANT_A, groups=(APPROVER_GROUP,)),
    Role.PARTNER: Member(
        "mx-partner-a", Role.PARTNER, TENANT_A, partner_id="mx-partner", accounts=("mx-acct",)
    ),
    Role.SERVICE: Member("mx-service-a", Role.SERVICE, TENANT_A),
    Role.ADMIN: Member("mx-admin-a", Role.ADMIN, TENANT_A),
}
# Principals that hold permissions but may not see tenant A's customer's objects.
OUTSIDERS: tuple[Member, ...] = (
    Member("mx-operator-b", Role.OPERATOR, TENANT_B),
    # Same customer id as the target, another tenant: still another customer.
    Member("mx-customer-b", Role.CUSTOMER, TENANT_B, customer="target"),
    Member("mx-approver-b", Role.APPROVER, TENANT_B, groups=(APPROVER_GROUP,)),
    Member("mx-customer-a2", Role.CUSTOMER, TENANT_A, customer="mx-other-customer"),
)
CAST: dict[str, Member] = {m.name: m for m in [*INSIDERS.values(), *OUTSIDERS]}


class Scope(StrEnum):
    """What decides whether a caller holding the permission may see what the route touches."""

    NONE = "none"  # nothing of a tenant (the catalog) or the caller's own tenant (lists, KPIs)
    OBJECT = "object"  # one object of tenant A (approval, dead letter): other tenants get 404
    CUSTOMER_OBJECT = "customer_object"  # tenant A's customer's subscription: others get 404


@dataclass(frozen=True)
class Call:
    """A request of the matrix and the answer it must get."""

    who: str  # a CAST name or ANONYMOUS
    status: int | tuple[int, ...]
    code: str | None = None  # the error code, for error answers
    body: Any = NO_BODY  # NO_BODY: the route's body
    check: Check | None = None
    why: str = ""  # what the answer proves, for a business error

    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # the path as create_app lists it
    url: str  # with {sub}, {approval}, {dead_letter}, {key} placeholders
    permission: Permission
    allowed: tuple[Call, ...]  # every insider role holding the permission, in order
    scope: Scope = Scope.NONE
    body: Any = NO_BODY  # a valid body, so a refusal is never a validation error
    outsiders: tuple[Call, ...] = ()  # what outsiders get on a NONE-scope route (lists)
    content: bytes | None = None  # a raw body (intake channels) instead of JSON
    # "bearer" (a token or API key) or "stripe-signature": Stripe signs its webhook instead,
    # so no bearer credential counts there and every unsigned call is SIGNATURE_INVALID.
    credential: str = "bearer"

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.template)


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path template) ``app`` serves, included routers too (HEAD left out)."""
    out: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        path = route.path
        for method in route.methods or ():
            if method != "HEAD" and path is not None:
                out.add((method, path))
    return out


def holders(permission: Permission) -> set[Role]:
    return {role for role, grants in role_permissions().items() if permission in grants}


def expand(route: Route) -> Iterator[Call]:
    """The route's calls: refusals first (they change nothing), then the allowed calls."""
    if route.credential == STRIPE_SIGNATURE:
        for who in (ANONYMOUS, *(m.name for m in INSIDERS.values())):
            yield Call(who, 401, "SIGNATURE_INVALID")
        yield from route.allowed
        return
    yield Call(ANONYMOUS, 401, "UNAUTHENTICATED")
    granted = holders(route.permission)
    for role, member in INSIDERS.items():
        if role not in granted:
            yield Call(member.name, 403, "FORBIDDEN")
    if route.scope != Scope.NONE:
        for member in OUTSIDERS:
            if member.role not in granted:
                continue  # refused by role above
            if route.scope == Scope.OBJECT and member.tenant_id == TENANT_A:
                continue  # same tenant, tenant-scoped object: visible
            yield Call(member.name, 404, "NOT_FOUND")
    yield from route.outsiders
    yield from route.allowed


def missing_allowed(route: Route) -> set[Role]:
    """Roles holding the route's permission that the table gives no allowed call."""
    if route.credential == STRIPE_SIGNATURE:
        return set()
    covered = {CAST[c.who].role for c in route.allowed if c.who in CAST}
    return holders(route.permission) - covered


@dataclass
class Outcome:
    route: Route
    call: Call
    status: int
    body: Any
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = str(self.body)[:300]
        return (
            f"{self.route.method} {self.route.template} as {self.call.who}: expected "
            f"{self.call.status} {self.call.code or ''}, got {self.status} {text} "
            f"({'; '.join(self.problems)})"
        )
