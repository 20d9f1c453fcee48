"""Credentials and idempotency keys (starter/auth.py, starter/access.py, the principal store).

A real principal store on the test database; no Temporal, no HTTP.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import jwt
import pytest
from sqlalchemy import Engine

from activities.auth_store import AuthStore
from activities.store import Store
from models.errors import ErrorCode, OmsError, http_status
from models.identity import Principal, Role
from starter.access import Access, fingerprint
from starter.auth import (
    AUDIENCE,
    DEV_SIGNING_SECRETS,
    Authenticator,
    check_config,
    dev_credentials_allowed,
)
from tests.support.auth import TEST_AUTH
from workers.config import AuthConfig

KEY_1 = "first-signing-key-of-the-suite-0123456789abcdef"
KEY_2 = "second-signing-key-of-the-suite-0123456789abcdef"
DEV_KEY = next(iter(DEV_SIGNING_SECRETS))


def config(**auth: Any) -> AuthConfig:
    return AuthConfig.model_validate({**TEST_AUTH, **auth})


@pytest.fixture
def store(engine: Engine) -> AuthStore:
    return AuthStore(engine)


@pytest.fixture
def auth(store: AuthStore) -> Authenticator:
    return Authenticator(config(), store)


def stored(store: AuthStore, pid: str = "ops", tenant: str = "acme", **kw: Any) -> Principal:
    kw.setdefault("role", Role.OPERATOR)
    return store.put_principal(Principal(id=pid, tenant_id=tenant, **kw))


def refused(
    call: Callable[..., Any], *args: Any, code: ErrorCode = ErrorCode.UNAUTHENTICATED
) -> str:
    """``call(*args)`` raises ``code``; its message."""
    with pytest.raises(OmsError) as err:
        call(*args)
    assert err.value.code == code, err.value.message
    return err.value.message


def bearer(value: str) -> str:
    return f"Bearer {value}"


def claims(**over: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    base = {
        "iss": "subscription-oms",
        "aud": AUDIENCE,
        "sub": "ops",
        "tid": "acme",
        "iat": now,
        "exp": now + 600,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def signed(payload: dict[str, Any], secret: str = TEST_AUTH["signing_keys"]["t1"], **h: Any) -> str:
    headers = {"kid": "t1", **h}
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


# --- tokens ---------------------------------------------------------------------------------


def test_a_valid_token_names_its_principal_whose_role_comes_from_the_store(
    auth: Authenticator, store: AuthStore
) -> None:
    ops = stored(store)
    got = auth.authenticate(bearer(auth.issue(ops)))
    assert (got.id, got.tenant_id, got.role, got.credential) == (
        "ops",
        "acme",
        Role.OPERATOR,
        "token",
    )
    # A token issued while the principal was an admin grants nothing once the store says otherwise.
    token = auth.issue(ops.model_copy(update={"role": Role.ADMIN}))
    assert auth.authenticate(bearer(token)).role == Role.OPERATOR
    assert auth.authenticate(f"bearer  {auth.issue(ops)} ").id == "ops"


def test_an_expired_token_is_unauthenticated_401(auth: Authenticator, store: AuthStore) -> None:
    token = auth.issue(stored(store), ttl=timedelta(seconds=-5))
    assert "expired" in refused(lambda: auth.authenticate(bearer(token)))
    assert http_status(ErrorCode.UNAUTHENTICATED) == 401


def test_a_token_with_a_wrong_signature_is_refused(auth: Authenticator, store: AuthStore) -> None:
    stored(store)
    forged = signed(claims(), secret="not-the-server-key-0123456789abcdef0123")
    refused(lambda: auth.authenticate(bearer(forged)))


def test_a_token_with_an_unknown_or_no_key_id_is_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store)
    message = refused(lambda: auth.authenticate(bearer(signed(claims(), kid="t9"))))
    assert "key" in message
    no_kid = jwt.encode(claims(), TEST_AUTH["signing_keys"]["t1"], algorithm="HS256")
    refused(lambda: auth.authenticate(bearer(no_kid)))
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":["t1"]}').rstrip(b"=").decode()
    odd_kid = header + "." + signed(claims()).split(".", 1)[1]
    refused(lambda: auth.authenticate(bearer(odd_kid)))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_unsigned_and_other_algorithm_tokens_are_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store)
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "t1"})
    refused(lambda: auth.authenticate(bearer(unsigned)))
    hs512 = jwt.encode(
        claims(), TEST_AUTH["signing_keys"]["t1"], algorithm="HS512", headers={"kid": "t1"}
    )
    refused(lambda: auth.authenticate(bearer(hs512)))


def test_key_rotation_accepts_listed_keys_and_refuses_removed_ones(
    store: AuthStore,
) -> None:
    ops = stored(store)
    old = Authenticator(config(signing_keys={"old": KEY_1}, active_key="old"), store)
    both = Authenticator(config(signing_keys={"old": KEY_1, "new": KEY_2}, active_key="new"), store)
    new_only = Authenticator(config(signing_keys={"new": KEY_2}, active_key="new"), store)

    old_token = old.issue(ops)
    assert both.authenticate(bearer(old_token)).id == "ops"  # the old key is still listed
    new_token = both.issue(ops)
    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    assert new_only.authenticate(bearer(new_token)).id == "ops"
    refused(lambda: new_only.authenticate(bearer(old_token)))  # the old key was removed
    refused(lambda: old.authenticate(bearer(new_token)))


def _tamper(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


def test_tampered_claims_are_refused(auth: Authenticator, store: AuthStore) -> None:
    ops = stored(store)
    stored(store, "root", role=Role.ADMIN)
    stored(store, "ops-globex", tenant="globex")
    token = auth.issue(ops)
    for changes in (
        {"sub": "root"},
        {"tid": "globex", "sub": "ops-globex"},
        {"exp": 4_102_444_800},
        {"role": "admin"},
    ):
        refused(auth.authenticate, bearer(_tamper(token, **changes)))


def test_wrong_audience_issuer_or_missing_claims_are_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store)
    assert auth.authenticate(bearer(signed(claims()))).id == "ops"  # the baseline is valid
    for bad in (
        claims(aud="another-api"),
        claims(iss="someone-else"),
        claims(aud=None),
        claims(iss=None),
        claims(exp=None),
        claims(iat=None),
        claims(sub=None),
        claims(tid=None),
    ):
        refused(auth.authenticate, bearer(signed(bad)))


def test_a_token_naming_an_unknown_or_disabled_principal_is_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    ghost = Principal(id="ghost", tenant_id="acme", role=Role.OPERATOR)
    refused(lambda: auth.authenticate(bearer(auth.issue(ghost))))
    ops = stored(store)
    token = auth.issue(ops)
    assert store.disable_principal("ops")
    assert "no active principal" in refused(lambda: auth.authenticate(bearer(token)))


def test_a_token_whose_tenant_is_not_the_principal_s_is_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store, "ops", tenant="acme")
    refused(lambda: auth.authenticate(bearer(signed(claims(tid="globex")))))
    # The principal moved to another tenant: tokens naming the old one stop working.
    token = auth.issue(store.principal("ops"))  # type: ignore[arg-type]
    stored(store, "ops", tenant="globex")
    refused(lambda: auth.authenticate(bearer(token)))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic b3BzOnNlY3JldA==",
        "Token abc",
        "Bearer not-a-token",
        "Bearer a.b.c",
        "Bearer ééé.ééé.ééé",
        "Bearer " + "x" * 5000,
    ],
)
def test_missing_or_malformed_credentials_are_unauthenticated(
    auth: Authenticator, store: AuthStore, header: str | None
) -> None:
    stored(store)
    refused(lambda: auth.authenticate(header))


# --- API keys -------------------------------------------------------------------------------


def test_a_valid_api_key_names_its_principal_and_only_its_hash_is_stored(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store, "partner-1", role=Role.PARTNER, partner_id="p1", accounts=("acct_1",))
    key = auth.create_api_key("partner-1")
    got = auth.authenticate(bearer(key))
    assert (got.id, got.role, got.accounts, got.credential) == (
        "partner-1",
        Role.PARTNER,
        ("acct_1",),
        "api_key",
    )
    key_id, secret = key.removeprefix("omsk_").split("_", 1)
    row = store.key(key_id)
    assert row is not None and secret not in row.secret_hash and row.secret_hash != secret


def test_an_api_key_with_a_wrong_secret_or_unknown_id_is_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store)
    key = auth.create_api_key("ops")
    key_id, secret = key.removeprefix("omsk_").split("_", 1)
    assert auth.authenticate(bearer(key)).id == "ops"
    for bad in (
        f"omsk_{key_id}_{secret[:-1]}x" if secret[-1] != "x" else f"omsk_{key_id}_{secret[:-1]}y",
        f"omsk_{key_id}_",
        f"omsk_{key_id}",
        f"omsk_ffffffffffffffff_{secret}",
        "omsk_",
        "omsk__",
    ):
        refused(auth.authenticate, bearer(bad))


def test_a_revoked_api_key_is_refused(auth: Authenticator, store: AuthStore) -> None:
    stored(store)
    key = auth.create_api_key("ops")
    assert store.revoke_key(key.split("_")[1])
    assert "revoked" in refused(lambda: auth.authenticate(bearer(key)))
    assert not store.revoke_key("no-such-key")


def test_an_expired_api_key_is_refused(auth: Authenticator, store: AuthStore) -> None:
    stored(store)
    now = datetime.now(UTC)
    expired = auth.create_api_key("ops", expires_at=now - timedelta(seconds=1))
    assert "expired" in refused(lambda: auth.authenticate(bearer(expired)))
    valid = auth.create_api_key("ops", expires_at=now + timedelta(days=1))
    assert auth.authenticate(bearer(valid)).id == "ops"


def test_an_api_key_of_a_disabled_principal_is_refused(
    auth: Authenticator, store: AuthStore
) -> None:
    stored(store)
    key = auth.create_api_key("ops")
    store.disable_principal("ops")
    refused(lambda: auth.authenticate(bearer(key)))
    refused(lambda: auth.create_api_key("ops"), code=ErrorCode.NOT_FOUND)
    refused(lambda: auth.create_api_key("nobody"), code=ErrorCode.NOT_FOUND)


# --- configuration --------------------------------------------------------------------------


def test_check_config_refuses_a_missing_or_unlisted_key_everywhere() -> None:
    for env in ("dev", "production"):
        refused(check_config, config(environment=env, signing_keys={}), code=_CI)
        refused(check_config, config(environment=env, active_key="nope"), code=_CI)
    refused(lambda: check_config(AuthConfig()), code=_CI)  # the defaults: production, no key


_CI = ErrorCode.CONFIG_INVALID


def test_check_config_refuses_production_with_the_dev_key_or_a_short_key(
    store: AuthStore,
) -> None:
    dev_key = {"signing_keys": {"dev": DEV_KEY}, "active_key": "dev"}
    assert "dev key" in refused(
        lambda: check_config(config(environment="production", **dev_key)), code=_CI
    )
    # A listed dev key is refused even when it is not the active one.
    listed = {"signing_keys": {"k1": KEY_1, "dev": DEV_KEY}, "active_key": "k1"}
    refused(lambda: check_config(config(environment="production", **listed)), code=_CI)
    short = {"signing_keys": {"k1": "s" * 31}, "active_key": "k1"}
    assert "shorter" in refused(
        lambda: check_config(config(environment="production", **short)), code=_CI
    )
    refused(lambda: Authenticator(config(environment="production", **dev_key), store), code=_CI)
    check_config(config(environment="production", signing_keys={"k1": "s" * 32}, active_key="k1"))
    check_config(config(environment="dev", **dev_key))  # a dev stack may use the dev key


def test_the_api_refuses_to_start_without_a_usable_key() -> None:
    from starter.api import create_app
    from workers.config import Config

    bad = {"environment": "production", "signing_keys": {"dev": DEV_KEY}, "active_key": "dev"}
    with pytest.raises(OmsError) as err:
        create_app(Config.model_validate({"auth": bad}))
    assert err.value.code == _CI


def test_dev_credentials_only_on_a_dev_stack_signing_with_the_dev_key() -> None:
    dev_key = {"signing_keys": {"dev": DEV_KEY}, "active_key": "dev"}
    assert dev_credentials_allowed(config(environment="dev", **dev_key))
    assert not dev_credentials_allowed(config(environment="production", **dev_key))
    assert not dev_credentials_allowed(config(environment="test", **dev_key))
    own = {"signing_keys": {"dev": DEV_KEY, "k1": KEY_1}, "active_key": "k1"}
    assert not dev_credentials_allowed(config(environment="dev", **own))
    assert not dev_credentials_allowed(config(environment="dev"))


# --- idempotency keys -----------------------------------------------------------------------


def access(store: AuthStore, principal: Principal) -> Access:
    service = SimpleNamespace(store=Store(store.engine))  # key() reads only the store
    return Access(cast(Any, service), store, principal, "api")


def test_a_creation_key_is_scoped_to_its_principal_and_bound_to_its_body(
    store: AuthStore,
) -> None:
    alice = stored(store, "alice", role=Role.CUSTOMER, customer_id="cus_a")
    bob = stored(store, "bob", role=Role.CUSTOMER, customer_id="cus_b")
    body = {"plan_id": "pro", "email": "a@example.com"}
    first = access(store, alice).key("k-1", "subscribe", body)
    again = access(store, alice).key("k-1", "subscribe", dict(reversed(body.items())))
    assert first == again and first != "k-1"  # a retry with the same body: the same request
    message = refused(
        lambda: access(store, alice).key("k-1", "subscribe", {**body, "plan_id": "business"}),
        code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
    )
    assert "Idempotency-Key" in message
    assert http_status(ErrorCode.IDEMPOTENCY_KEY_REUSED) == 409
    # Bob's "k-1" is another request: another scoped key, bound to Bob's body.
    bobs = access(store, bob).key("k-1", "subscribe", {**body, "plan_id": "business"})
    assert bobs is not None and bobs != first
    assert access(store, alice).key(None, "subscribe", body) is None


def test_a_request_key_on_a_subscription_is_bound_to_its_principal_and_body(
    store: AuthStore,
) -> None:
    ops = stored(store, "ops")
    other = stored(store, "ops-2")
    payload = {"subscription": "sub_1", "quantity": 3}
    rid = access(store, ops).key("rq-1", "change", payload, "sub_1")
    assert rid is not None and rid.startswith("req_")
    assert access(store, ops).key("rq-1", "change", payload, "sub_1") == rid  # a retry
    for who, op, body in (
        (ops, "change", {**payload, "quantity": 4}),  # another body
        (ops, "pause", payload),  # another operation
        (other, "change", payload),  # another principal: never the first one's result
    ):
        refused(
            access(store, who).key, "rq-1", op, body, "sub_1", code=ErrorCode.IDEMPOTENCY_KEY_REUSED
        )
    # The same key on another subscription is another request, with another id.
    elsewhere = access(store, other).key("rq-1", "change", payload, "sub_2")
    assert elsewhere is not None and elsewhere != rid


def test_idempotency_keys_have_a_length_limit(store: AuthStore) -> None:
    ops = access(store, stored(store))
    assert ops.key("k" * 255, "subscribe", {}) is not None
    refused(lambda: ops.key("k" * 256, "subscribe", {}), code=ErrorCode.INVALID_REQUEST)
    refused(lambda: ops.key("k" * 256, "change", {}, "sub_1"), code=ErrorCode.INVALID_REQUEST)


def test_fingerprints_ignore_key_order_and_see_every_value() -> None:
    assert fingerprint("op", {"a": 1, "b": 2}) == fingerprint("op", {"b": 2, "a": 1})
    assert fingerprint("op", {"a": 1}) != fingerprint("op", {"a": 2})
    assert fingerprint("op", {"a": 1}) != fingerprint("other", {"a": 1})
