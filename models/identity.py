"""Who is calling: principals, tenants, roles and the permissions each role grants.

Pure vocabulary and rules (no I/O). A :class:`Principal` is built by ``starter.auth`` from verified
credentials and the principal store, never from a request body. Grants are data
(``models/data/roles.yaml``); anything not granted is denied. Scope is fixed by the role:

- ``customer``: its own customer's objects in its tenant;
- ``operator``, ``approver``, ``service``: everything of its tenant its permissions name;
- ``partner``: orders for the accounts its key names;
- ``admin``: tenants, principals and keys.

Another tenant's object, or another customer's for a customer, "does not exist": callers answer
``NOT_FOUND`` for it exactly as for an id nobody has.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from functools import cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field

from models.errors import ErrorCode, OmsError

DEFAULT_TENANT = "default"
MAX_GROUPS = 32
MAX_ACCOUNTS = 1000


class Role(StrEnum):
    CUSTOMER = "customer"
    OPERATOR = "operator"
    APPROVER = "approver"
    PARTNER = "partner"
    SERVICE = "service"
    ADMIN = "admin"


class Permission(StrEnum):
    """An operation class; routes and commands each require one."""

    CATALOG_READ = "catalog:read"
    SUBSCRIPTIONS_CREATE = "subscriptions:create"
    SUBSCRIPTIONS_READ = "subscriptions:read"
    SUBSCRIPTIONS_MANAGE = "subscriptions:manage"
    SUBSCRIPTIONS_RETRY = "subscriptions:retry"
    PAYMENT_METHODS_UPDATE = "payment_methods:update"
    AUDIT_READ = "audit:read"
    APPROVALS_READ = "approvals:read"
    APPROVALS_DECIDE = "approvals:decide"
    ORDERS_SUBMIT = "orders:submit"
    INTAKE_READ = "intake:read"
    INTAKE_MANAGE = "intake:manage"
    KPIS_READ = "kpis:read"
    CLOCKS_MANAGE = "clocks:manage"
    WEBHOOKS_MANAGE = "webhooks:manage"
    ENROLLMENTS_MANAGE = "enrollments:manage"
    HEALTH_READ = "health:read"
    TENANTS_MANAGE = "tenants:manage"
    PRINCIPALS_MANAGE = "principals:manage"
    KEYS_MANAGE = "keys:manage"


@cache
def role_permissions() -> dict[Role, frozenset[Permission]]:
    """The grants of ``models/data/roles.yaml`` (every role listed, every permission known)."""
    text = resources.files("models").joinpath("data/roles.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    grants: dict[Role, frozenset[Permission]] = {}
    for role in Role:
        names = raw.get(role.value)
        if not isinstance(names, list):
            raise ValueError(f"roles.yaml: role {role.value} is missing")
        grants[role] = frozenset(Permission(n) for n in names)
    unknown = set(raw) - {r.value for r in Role}
    if unknown:
        raise ValueError(f"roles.yaml: unknown role(s) {', '.join(sorted(unknown))}")
    return grants


class Principal(BaseModel):
    """An authenticated caller. Built from credentials and the principal store only."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(max_length=64)
    tenant_id: str = Field(max_length=64)
    role: Role
    customer_id: str | None = Field(default=None, max_length=64)  # a customer's own record
    groups: tuple[str, ...] = ()  # an approver's groups (from the principal store)
    partner_id: str | None = Field(default=None, max_length=64)
    accounts: tuple[str, ...] = ()  # the accounts a partner (or a customer) may bill
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)  # where notices to it go (approvers)
    credential: str = "token"  # token | api_key | signature | local (how it authenticated)

    def can(self, permission: Permission) -> bool:
        return permission in role_permissions()[self.role]

    def require(self, permission: Permission) -> None:
        """``FORBIDDEN`` unless the role grants ``permission``."""
        if not self.can(permission):
            raise OmsError(
                ErrorCode.FORBIDDEN,
                f"a {self.role.value} may not do this (needs {permission.value}); ask an "
                "operator of your tenant",
            )

    def sees(self, tenant_id: str | None, customer_id: str | None = None) -> bool:
        """True when an object of ``tenant_id`` (and ``customer_id``) is visible to this caller.

        Rows written before tenants existed belong to the default tenant (``None`` reads so).
        """
        if (tenant_id or DEFAULT_TENANT) != self.tenant_id:
            return False
        if self.role == Role.CUSTOMER:
            return customer_id is not None and customer_id == self.customer_id
        return True

    def may_bill(self, account_id: str) -> bool:
        """An order may bill ``account_id`` only for a principal authorized for that account."""
        if self.role in (Role.OPERATOR, Role.SERVICE):
            return True
        if self.role == Role.CUSTOMER:
            return account_id == self.customer_id or account_id in self.accounts
        if self.role == Role.PARTNER:
            return account_id in self.accounts
        return False

    @property
    def customer_scoped(self) -> bool:
        return self.role == Role.CUSTOMER


def scoped_key(principal: Principal, key: str) -> str:
    """An idempotency key scoped to its principal (and tenant): the same client key sent by two
    principals names two different requests, never one's result to the other. A valid id."""
    digest = hashlib.sha256(f"{principal.tenant_id}\x1f{principal.id}\x1f{key}".encode())
    return "k" + digest.hexdigest()[:40]


def not_found(kind: str, object_id: str) -> OmsError:
    """The one answer for an id nobody has and for one the caller may not see."""
    return OmsError(ErrorCode.NOT_FOUND, f"no {kind} {object_id}")


def permission_table() -> str:
    """The grants as a Markdown table, role x permission (docs/access.md shows this one)."""
    grants = role_permissions()
    roles = list(Role)
    lines = [
        "| permission | " + " | ".join(r.value for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for perm in Permission:
        marks = " | ".join("yes" if perm in grants[r] else "" for r in roles)
        lines.append(f"| `{perm.value}` | {marks} |")
    return "\n".join(lines)
