"""The principal store: tenants, principals, API keys and idempotency-key bindings.

Only ``starter.auth`` (credentials) and ``starter.access`` (idempotency) use it. A principal read
from here is the authority on its role, groups and accounts; credentials only name it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from activities.tables import ApiKeyRow, IdempotencyKeyRow, PrincipalRow, Tenant, utcnow
from models.errors import ErrorCode, OmsError
from models.identity import Principal, Role


def _principal(row: PrincipalRow) -> Principal:
    return Principal(
        id=row.id,
        tenant_id=row.tenant_id,
        role=Role(row.role),
        name=row.name,
        email=row.email,
        customer_id=row.customer_id,
        groups=tuple(json.loads(row.groups)),
        partner_id=row.partner_id,
        accounts=tuple(json.loads(row.accounts)),
    )


class AuthStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- tenants -------------------------------------------------------------------------

    def ensure_tenant(self, tenant_id: str, name: str | None = None) -> Tenant:
        with self.session() as s:
            row = s.get(Tenant, tenant_id)
            if row is not None:
                return row
            row = Tenant(id=tenant_id, name=name or tenant_id, created_at=utcnow())
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # created concurrently: the same tenant
                s.rollback()
                found = s.get(Tenant, tenant_id)
                assert found is not None
                return found
            return row

    def tenants(self) -> Sequence[Tenant]:
        with self.session() as s:
            return s.exec(select(Tenant).order_by(col(Tenant.id))).all()

    # --- principals ----------------------------------------------------------------------

    def put_principal(self, p: Principal) -> Principal:
        """Create or replace a principal (its tenant is created when new)."""
        self.ensure_tenant(p.tenant_id)
        values: dict[str, Any] = {
            "tenant_id": p.tenant_id,
            "role": p.role.value,
            "name": p.name,
            "email": p.email,
            "customer_id": p.customer_id,
            "groups": json.dumps(sorted(p.groups)),
            "partner_id": p.partner_id,
            "accounts": json.dumps(sorted(p.accounts)),
            "disabled_at": None,
        }
        with self.session() as s:
            row = s.get(PrincipalRow, p.id)
            if row is None:
                row = PrincipalRow(id=p.id, created_at=utcnow(), **values)
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            s.add(row)
            s.commit()
            return _principal(row)

    def principal(self, principal_id: str) -> Principal | None:
        """The principal, or None when unknown or disabled."""
        with self.session() as s:
            row = s.get(PrincipalRow, principal_id)
        if row is None or row.disabled_at is not None:
            return None
        return _principal(row)

    def disable_principal(self, principal_id: str) -> bool:
        with self.session() as s:
            row = s.get(PrincipalRow, principal_id)
            if row is None:
                return False
            row.disabled_at = utcnow()
            s.add(row)
            s.commit()
            return True

    def principals(self, tenant_id: str | None = None) -> list[Principal]:
        q = select(PrincipalRow).where(col(PrincipalRow.disabled_at).is_(None))
        if tenant_id is not None:
            q = q.where(PrincipalRow.tenant_id == tenant_id)
        with self.session() as s:
            return [_principal(r) for r in s.exec(q.order_by(col(PrincipalRow.id))).all()]

    # --- API keys ------------------------------------------------------------------------

    def add_key(
        self, key_id: str, principal_id: str, secret_hash: str, expires_at: datetime | None
    ) -> ApiKeyRow:
        row = ApiKeyRow(
            id=key_id,
            principal_id=principal_id,
            secret_hash=secret_hash,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        with self.session() as s:
            s.add(row)
            s.commit()
        return row

    def key(self, key_id: str) -> ApiKeyRow | None:
        with self.session() as s:
            return s.get(ApiKeyRow, key_id)

    def revoke_key(self, key_id: str) -> bool:
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return False
            row.revoked_at = row.revoked_at or utcnow()
            s.add(row)
            s.commit()
            return True

    def keys(self, principal_id: str | None = None) -> Sequence[ApiKeyRow]:
        q = select(ApiKeyRow)
        if principal_id is not None:
            q = q.where(ApiKeyRow.principal_id == principal_id)
        with self.session() as s:
            return s.exec(q.order_by(col(ApiKeyRow.created_at))).all()

    # --- idempotency keys ----------------------------------------------------------------

    def bind_idempotency_key(
        self, scoped_key: str, principal: Principal, operation: str, fingerprint: str
    ) -> None:
        """Bind a key to its principal and request on first use; refuse it for any other.

        Raises:
            OmsError: ``IDEMPOTENCY_KEY_REUSED`` when the key named another request, or was
                used by another principal, before.
        """
        row = IdempotencyKeyRow(
            scoped_key=scoped_key,
            principal_id=principal.id,
            tenant_id=principal.tenant_id,
            operation=operation,
            fingerprint=fingerprint,
            created_at=utcnow(),
        )
        with self.session() as s:
            existing = s.get(IdempotencyKeyRow, scoped_key)
            if existing is None:
                s.add(row)
                try:
                    s.commit()
                    return
                except IntegrityError:  # the same key, concurrently: compare with the winner
                    s.rollback()
                    existing = s.get(IdempotencyKeyRow, scoped_key)
                    assert existing is not None
        if (
            existing.principal_id != principal.id
            or existing.tenant_id != principal.tenant_id
            or existing.operation != operation
            or existing.fingerprint != fingerprint
        ):
            raise OmsError(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was already used for a different request; send a new key "
                "for a new request, or the same body to get the first result again",
            )
