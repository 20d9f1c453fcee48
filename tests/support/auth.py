"""Credentials for tests: a signing key, principals in the store, bearer headers.

Every API test authenticates the way a client does: a principal is written to the principal
store and a token signed for it (``headers_for``). ``with_auth`` adds the test signing key to a
config dict.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from activities.auth_store import AuthStore
from models.identity import DEFAULT_TENANT, Principal, Role
from starter.auth import Authenticator
from workers.config import AuthConfig

TEST_SIGNING_KEY = "test-signing-key-for-the-suite-only-0123456789"
TEST_AUTH: dict[str, Any] = {
    "environment": "test",
    "signing_keys": {"t1": TEST_SIGNING_KEY},
    "active_key": "t1",
    # Roomy: the suite sends many requests per principal and from one address.
    "rate_limit_principal": "100000/minute",
    "rate_limit_ip": "100000/minute",
}


# Keys enrollment's hashes (codes, enrollment tokens, addresses) in test configs.
TEST_ENROLLMENT_SECRET = "test-enrollment-secret-for-the-suite-only-0123456789"


def with_auth(config: dict[str, Any], **auth: Any) -> dict[str, Any]:
    """``config`` (a Config dict) with the test auth section (``auth`` overrides keys) and an
    enrollment secret (unless ``config`` names one)."""
    enrollment = {"secret": TEST_ENROLLMENT_SECRET, **config.get("enrollment", {})}
    return {**config, "auth": {**TEST_AUTH, **auth}, "enrollment": enrollment}


def authenticator(engine: Engine) -> Authenticator:
    return Authenticator(AuthConfig.model_validate(TEST_AUTH), AuthStore(engine))


def principal(
    engine: Engine,
    role: Role | str,
    principal_id: str | None = None,
    *,
    tenant_id: str = DEFAULT_TENANT,
    customer_id: str | None = None,
    groups: tuple[str, ...] = (),
    partner_id: str | None = None,
    accounts: tuple[str, ...] = (),
) -> Principal:
    """A principal written to the store (created or replaced)."""
    role = Role(role)
    p = Principal(
        id=principal_id or f"{tenant_id}-{role.value}",
        tenant_id=tenant_id,
        role=role,
        customer_id=customer_id,
        groups=groups,
        partner_id=partner_id,
        accounts=accounts,
    )
    return AuthStore(engine).put_principal(p)


def token_for(engine: Engine, p: Principal) -> str:
    return authenticator(engine).issue(p)


def headers_for(
    engine: Engine, role: Role | str, principal_id: str | None = None, **kw: Any
) -> dict[str, str]:
    """``Authorization`` headers for a new (or replaced) principal of ``role``."""
    p = principal(engine, role, principal_id, **kw)
    return {"Authorization": f"Bearer {token_for(engine, p)}"}


def operator_headers(engine: Engine, tenant_id: str = DEFAULT_TENANT) -> dict[str, str]:
    return headers_for(engine, Role.OPERATOR, f"{tenant_id}-operator", tenant_id=tenant_id)
