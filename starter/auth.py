"""Credentials: who a request is from (docs/access.md).

Two kinds, both sent as ``Authorization: Bearer ...``:

- **Tokens**: JWTs (PyJWT, HS256) with ``sub`` (the principal id), ``tid`` (its tenant), ``iat``,
  ``exp``, ``iss`` and ``aud``; the header's ``kid`` names the signing key, so keys rotate without
  invalidating tokens signed with a key still listed.
- **API keys** for partners and services, in Stripe's manner: ``omsk_<key id>_<secret>``, shown
  once; only an HMAC-SHA256 of the secret is stored. The secret is 256 random bits, so a fast
  keyed hash is as strong as a slow one here (nothing to guess); argon2 would only add latency to
  every request.

Either way the principal's role, groups and accounts are read from the principal store on every
request: a credential names a principal, it never grants anything by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from activities.auth_store import AuthStore
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT, Principal, Role
from workers.config import AuthConfig, Config

API_KEY_PREFIX = "omsk_"
AUDIENCE = "oms-api"
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
# The signing key temporal-dev.yaml ships with. It is public, so production refuses it.
DEV_SIGNING_SECRETS = frozenset({"oms-dev-signing-key-public-never-use-in-production"})
_KEY_HASH_CONTEXT = b"oms-api-key-v1"


def unauthenticated(message: str) -> OmsError:
    return OmsError(ErrorCode.UNAUTHENTICATED, message)


def check_config(auth: AuthConfig) -> None:
    """Refuse a configuration that cannot sign safely.

    Everywhere: an active key that is listed. In production (any ``environment`` but ``dev``):
    keys of at least 32 bytes, none of them the public dev key.

    Raises:
        OmsError: ``CONFIG_INVALID`` naming what to set.
    """
    if not auth.signing_keys or auth.active_key not in auth.signing_keys:
        raise OmsError(
            ErrorCode.CONFIG_INVALID,
            "no token signing key: set OMS_AUTH_SIGNING_KEYS=kid:secret and "
            "OMS_AUTH_ACTIVE_KEY=kid (a secret of at least 32 random bytes)",
        )
    if auth.environment == "dev":
        return
    for kid, secret in auth.signing_keys.items():
        if secret in DEV_SIGNING_SECRETS:
            raise OmsError(
                ErrorCode.CONFIG_INVALID,
                f"signing key {kid!r} is the public dev key; production needs its own "
                "(OMS_AUTH_SIGNING_KEYS)",
            )
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise OmsError(
                ErrorCode.CONFIG_INVALID,
                f"signing key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes",
            )


def dev_credentials_allowed(auth: AuthConfig) -> bool:
    """Dev tokens (``oms dev token``, the CLI's implicit operator) only on a dev stack signing
    with the public dev key: never where a production key is configured."""
    active = auth.signing_keys.get(auth.active_key or "")
    return auth.environment == "dev" and active in DEV_SIGNING_SECRETS


def _hash_secret(secret: str) -> str:
    return hmac.new(_KEY_HASH_CONTEXT, secret.encode(), hashlib.sha256).hexdigest()


class Authenticator:
    """Turns a bearer credential into a :class:`Principal` (or ``UNAUTHENTICATED``)."""

    def __init__(self, auth: AuthConfig, store: AuthStore) -> None:
        check_config(auth)
        self.auth = auth
        self.store = store

    @classmethod
    def from_config(cls, config: Config, store: AuthStore) -> Authenticator:
        return cls(config.auth, store)

    # --- tokens --------------------------------------------------------------------------

    def issue(self, principal: Principal, ttl: timedelta | None = None) -> str:
        """A signed token naming ``principal`` (which must be in the store to be accepted)."""
        kid = self.auth.active_key
        assert kid is not None  # check_config
        now = datetime.now(UTC)
        claims = {
            "iss": self.auth.issuer,
            "aud": AUDIENCE,
            "sub": principal.id,
            "tid": principal.tenant_id,
            "role": principal.role.value,
            "iat": int(now.timestamp()),
            "exp": int((now + (ttl or timedelta(seconds=self.auth.token_ttl_s))).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims, self.auth.signing_keys[kid], algorithm=ALGORITHM, headers={"kid": kid}
        )

    def _verify_token(self, token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise unauthenticated("the bearer token is not a valid token") from None
        secret = self.auth.signing_keys.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise unauthenticated("the token was signed with a key this server does not accept")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.auth.issuer,
                options={"require": ["exp", "iat", "sub", "tid"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("the token has expired; get a new one") from None
        except jwt.PyJWTError:
            raise unauthenticated("the token's signature or claims are not valid") from None
        return claims

    # --- API keys ------------------------------------------------------------------------

    def create_api_key(self, principal_id: str, expires_at: datetime | None = None) -> str:
        """A new API key for a stored principal; the only time its secret is visible."""
        if self.store.principal(principal_id) is None:
            raise OmsError(ErrorCode.NOT_FOUND, f"no principal {principal_id}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        self.store.add_key(key_id, principal_id, _hash_secret(secret), expires_at)
        return f"{API_KEY_PREFIX}{key_id}_{secret}"

    def _verify_key(self, key: str) -> str:
        key_id, sep, secret = key[len(API_KEY_PREFIX) :].partition("_")
        row = self.store.key(key_id) if sep and key_id and secret else None
        # Compare even when the key is unknown, so timing does not tell which part was wrong.
        expected = row.secret_hash if row is not None else _hash_secret("-")
        if not hmac.compare_digest(expected, _hash_secret(secret)) or row is None:
            raise unauthenticated("the API key is not valid")
        if row.revoked_at is not None:
            raise unauthenticated("the API key has been revoked")
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            raise unauthenticated("the API key has expired")
        return row.principal_id

    # --- requests ------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal an ``Authorization`` header stands for.

        Raises:
            OmsError: ``UNAUTHENTICATED`` without credentials, with an invalid, expired or revoked
                one, or one naming a principal that is unknown or disabled.
        """
        if not authorization:
            raise unauthenticated(
                "send credentials: Authorization: Bearer <token or API key> (locally: "
                "oms dev token --role operator)"
            )
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value or len(value) > 4096:
            raise unauthenticated("use Authorization: Bearer <token or API key>")
        if value.startswith(API_KEY_PREFIX):
            principal_id, credential, tenant = self._verify_key(value), "api_key", None
        else:
            claims = self._verify_token(value)
            principal_id, credential, tenant = str(claims["sub"]), "token", str(claims["tid"])
        principal = self.store.principal(principal_id)
        if principal is None or (tenant is not None and principal.tenant_id != tenant):
            raise unauthenticated("the credential names no active principal")
        return principal.model_copy(update={"credential": credential})


def dev_principal(
    role: Role,
    *,
    principal_id: str | None = None,
    tenant_id: str = DEFAULT_TENANT,
    customer_id: str | None = None,
    groups: tuple[str, ...] = (),
    partner_id: str | None = None,
    accounts: tuple[str, ...] = (),
) -> Principal:
    """A principal for a dev token: ``dev-<role>`` unless named."""
    if role == Role.CUSTOMER and not customer_id:
        raise OmsError(ErrorCode.INVALID_REQUEST, "a customer token needs --customer CUSTOMER_ID")
    if role == Role.PARTNER and not partner_id:
        raise OmsError(ErrorCode.INVALID_REQUEST, "a partner token needs --partner PARTNER_ID")
    default_id = {
        Role.CUSTOMER: f"dev-customer-{customer_id}",
        Role.PARTNER: f"dev-partner-{partner_id}",
    }.get(role, f"dev-{role.value}")
    return Principal(
        id=principal_id or default_id,
        tenant_id=tenant_id,
        role=role,
        customer_id=customer_id,
        groups=groups,
        partner_id=partner_id,
        accounts=accounts,
        name=principal_id or default_id,
    )
