"""The CLI's credentials: `oms dev token`, `oms whoami`, `oms admin ...`, OMS_TOKEN.

Real principal store (the test database), real tokens and API keys; no Temporal needed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from activities.auth_store import AuthStore
from models.identity import Role
from starter.auth import Authenticator
from starter.cli import app as oms_app
from workers.config import load_config

PROD_KEY = "prod:" + "p" * 48


@pytest.fixture
def dev_db(engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The dev configuration (temporal-dev.yaml) on the test database, no token set."""
    monkeypatch.setenv("OMS_DATABASE_URL", db_url)
    monkeypatch.delenv("OMS_TOKEN", raising=False)
    return engine


def oms(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(oms_app, list(args), env=env)


def authenticate(engine: Engine, credential: str) -> Any:
    auth = Authenticator(load_config().auth, AuthStore(engine))
    return auth.authenticate(f"Bearer {credential}")


def test_dev_token_prints_only_a_token_for_the_principal_it_stores(dev_db: Engine) -> None:
    result = oms("dev", "token", "--role", "customer", "--customer", "cust_1", "--tenant", "t2")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    who = authenticate(dev_db, result.stdout.strip())
    assert (who.role, who.tenant_id, who.customer_id) == (Role.CUSTOMER, "t2", "cust_1")


def test_an_approver_dev_token_takes_its_groups_from_the_policy_directory(dev_db: Engine) -> None:
    token = oms("dev", "token", "--role", "approver", "--principal", "carol").stdout.strip()
    assert authenticate(dev_db, token).groups == ("finance-directors",)


def test_dev_tokens_are_refused_where_a_production_key_is_configured(dev_db: Engine) -> None:
    result = oms(
        "dev",
        "token",
        "--role",
        "operator",
        env={"OMS_ENV": "production", "OMS_AUTH_SIGNING_KEYS": PROD_KEY},
    )
    assert result.exit_code == 2
    assert "error FORBIDDEN" in result.output


def test_whoami_is_the_dev_operator_on_a_dev_stack_and_the_token_s_principal_otherwise(
    dev_db: Engine,
) -> None:
    dev = json.loads(oms("whoami", "--json").stdout)
    assert (dev["id"], dev["role"]) == ("dev-operator", "operator")
    token = oms("dev", "token", "--role", "customer", "--customer", "cust_9").stdout.strip()
    mine = json.loads(oms("--token", token, "whoami", "--json").stdout)
    assert (mine["role"], mine["customer_id"]) == ("customer", "cust_9")
    via_env = json.loads(oms("whoami", "--json", env={"OMS_TOKEN": token}).stdout)
    assert via_env["id"] == mine["id"]


def test_production_without_a_token_is_unauthenticated(dev_db: Engine) -> None:
    env = {
        "OMS_ENV": "production",
        "OMS_AUTH_SIGNING_KEYS": PROD_KEY,
        "OMS_AUTH_ACTIVE_KEY": "prod",
    }
    result = oms("whoami", "--json", env=env)
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "UNAUTHENTICATED"
    bad = oms("--token", "not-a-token", "whoami", "--json", env=env)
    assert json.loads(bad.stdout)["error"]["code"] == "UNAUTHENTICATED"


def test_admin_commands_need_an_admin_and_manage_principals_and_keys(dev_db: Engine) -> None:
    refused = oms("admin", "principal", "acme-partner", "--role", "partner", "--partner", "acme")
    assert refused.exit_code == 2 and "error FORBIDDEN" in refused.output  # the dev operator

    admin = oms("admin", "bootstrap", "--principal", "root").stdout.strip()
    made = oms(
        "--token",
        admin,
        "admin",
        "principal",
        "acme-partner",
        "--role",
        "partner",
        "--partner",
        "acme",
        "--accounts",
        "acct_a,acct_b",
        "--json",
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["accounts"] == ["acct_a", "acct_b"]

    key = oms("--token", admin, "admin", "key", "acme-partner").stdout.strip()
    assert key.startswith("omsk_")
    partner = authenticate(dev_db, key)
    assert (partner.role, partner.partner_id, partner.credential) == (
        Role.PARTNER,
        "acme",
        "api_key",
    )
    key_id = key.split("_")[1]
    assert oms("--token", admin, "admin", "revoke", key_id).exit_code == 0
    revoked = oms("--token", key, "whoami", "--json")
    assert json.loads(revoked.stdout)["error"]["code"] == "UNAUTHENTICATED"

    assert oms("--token", admin, "admin", "disable", "root").exit_code == 0
    gone = oms("--token", admin, "whoami", "--json")
    assert json.loads(gone.stdout)["error"]["code"] == "UNAUTHENTICATED"


def test_the_documented_permission_table_is_the_one_in_roles_yaml() -> None:
    from pathlib import Path

    from models.identity import permission_table

    doc = Path("docs/access.md").read_text()
    documented = doc.split("<!-- permission-table -->\n")[1].split("\n<!-- /permission-table -->")[
        0
    ]
    assert documented == permission_table()
