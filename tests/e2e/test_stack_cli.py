"""End to end: the `make dev` stack (its launcher) on free ports, driven through `oms` and the API.

Real parts all the way: the temporal CLI dev server with search attributes, localstripe, the
worker and the API as separate processes, SQLite (or PostgreSQL in CI) as the system of record.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from starter.procs import ROOT, free_port

pytestmark = pytest.mark.e2e

OMS = [sys.executable, "-m", "starter.cli"]
STARTUP_TIMEOUT = 120


@dataclass
class RunningStack:
    env: dict[str, str]
    api: str
    temporal: str
    output: list[str]

    def oms(
        self, *args: str, check: bool = True, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``oms ARGS`` as the dev operator, or as ``token``'s principal (``OMS_TOKEN``)."""
        env = self.env if token is None else {**self.env, "OMS_TOKEN": token}
        proc = subprocess.run(
            [*OMS, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"oms {' '.join(args)} failed: {proc.stdout}\n{proc.stderr}")
        return proc

    def oms_json(self, *args: str, token: str | None = None) -> Any:
        return json.loads(self.oms(*args, "--json", token=token).stdout)

    def token(self, *args: str) -> str:
        """``oms dev token ARGS``: prints only the token."""
        out = self.oms("dev", "token", *args).stdout
        assert out.count("\n") == 1 and out.startswith("ey"), out
        return out.strip()


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state = tmp_path_factory.mktemp("oms-state")
    db_url = os.environ.get("OMS_TEST_E2E_DATABASE_URL") or f"sqlite:///{state / 'oms.db'}"
    ports = {name: free_port() for name in ("grpc", "ui", "stripe", "api", "smtp")}
    env = {
        **os.environ,
        "OMS_CONFIG": str(ROOT / "temporal-dev.yaml"),
        "OMS_TEMPORAL_ADDRESS": f"127.0.0.1:{ports['grpc']}",
        "OMS_TEMPORAL_UI_PORT": str(ports["ui"]),
        "OMS_TEMPORAL_DB": str(state / "temporal.db"),
        "OMS_LOCALSTRIPE_PORT": str(ports["stripe"]),
        "OMS_LOCALSTRIPE_STATE": str(state / "localstripe.pickle"),
        "OMS_STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "OMS_API_PORT": str(ports["api"]),
        "OMS_MAIL_SINK_PORT": str(ports["smtp"]),
        "OMS_MAIL_DIR": str(state / "mail"),
        "OMS_DATABASE_URL": db_url,
        "NO_COLOR": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "starter.devstack"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    up = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.rstrip("\n"))
            if "dev stack is up" in line:
                up.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not up.wait(STARTUP_TIMEOUT):
            raise AssertionError("stack did not come up:\n" + "\n".join(output[-60:]))
        yield RunningStack(
            env=env,
            api=f"http://127.0.0.1:{ports['api']}",
            temporal=f"127.0.0.1:{ports['grpc']}",
            output=output,
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_subscribe_through_the_cli_shows_in_list_api_and_temporal_visibility(
    running_stack: RunningStack,
) -> None:
    stack = running_stack
    plans = stack.oms_json("catalog")
    pro = next(p for p in plans if p["plan_id"] == "pro")
    assert "monthly" in pro["intervals"] and pro["prices"]

    pm = stack.oms("dev", "card", "4242424242424242").stdout.strip()
    assert pm.startswith("pm_")

    created = stack.oms_json(
        "subscribe",
        "--email",
        "e2e@example.com",
        "--plan",
        "pro",
        "--interval",
        "monthly",
        "--payment-method",
        pm,
        "--currency",
        "USD",
        "--trial-days",
        "0",
    )
    sub = created["subscription_id"]
    assert created["status"] == "active"
    assert created["first_charge_minor"] == 3000 and created["currency"] == "USD"

    listed = stack.oms_json("list")
    assert {"subscription_id": sub, "status": "active", "plan_id": "pro"}.items() <= next(
        r for r in listed if r["subscription_id"] == sub
    ).items()
    status = stack.oms_json("status", sub)
    assert status["status"] == "active" and status["period_index"] == 1
    invoices = stack.oms_json("invoices", sub)
    assert [i["total_minor"] for i in invoices] == [3000]
    timeline = stack.oms_json("timeline", sub)
    assert [e["kind"] for e in timeline["events"]][:2] == ["upcoming_charge_notice", "renewal"]

    anonymous = httpx.get(f"{stack.api}/subscriptions/{sub}", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "UNAUTHENTICATED"
    bearer = {"Authorization": f"Bearer {stack.token('--role', 'operator')}"}
    api = httpx.get(f"{stack.api}/subscriptions/{sub}", headers=bearer, timeout=10)
    assert api.status_code == 200 and api.json()["status"] == "active"
    health = httpx.get(f"{stack.api}/health", headers=bearer, timeout=10).json()
    assert health["ok"], health
    audit = stack.oms_json("audit", sub)
    assert audit[0]["actor"] == "dev-operator" and audit[0]["channel"] == "cli"

    # The Web UI lists it by its search attributes (visibility is eventually consistent).
    # Every run of the continue-as-new chain carries the attributes: ask for the live one.
    query = (
        f"CustomerId='{created['customer_id']}' AND SubscriptionStatus='active' "
        "AND PlanId='pro' AND TenantId='default' AND ExecutionStatus='Running'"
    )
    deadline = time.monotonic() + 20
    while True:
        found = subprocess.run(
            [
                str(Path(sys.executable).parent / "temporal"),
                "workflow",
                "list",
                "--address",
                stack.temporal,
                "--query",
                query,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        rows = json.loads(found.stdout or "[]") if found.returncode == 0 else []
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [r["execution"]["workflowId"] for r in rows] == [f"subscription:{sub}"]

    scheduled = stack.oms_json("cancel", sub, "--at-period-end")
    assert scheduled["cancel_at_period_end"] is True
    assert stack.oms_json("uncancel", sub)["cancel_at_period_end"] is False
    assert stack.oms_json("cancel", sub, "--now")["status"] == "canceled"


def test_cli_errors_exit_non_zero_with_code_on_stderr_or_in_json(
    running_stack: RunningStack,
) -> None:
    stack = running_stack
    bad = stack.oms(
        "subscribe",
        "--email",
        "x@example.com",
        "--plan",
        "gold",
        "--payment-method",
        "pm_abc123",
        check=False,
    )
    assert bad.returncode != 0
    assert bad.stderr.startswith("error UNKNOWN_PLAN:")
    as_json = stack.oms(
        "subscribe",
        "--email",
        "x@example.com",
        "--plan",
        "pro",
        "--payment-method",
        "4242424242424242",
        "--json",
        check=False,
    )
    assert as_json.returncode != 0
    assert json.loads(as_json.stdout)["error"]["code"] == "CARD_NUMBER_REFUSED"
    missing = stack.oms("status", "sub_nothere0", check=False)
    assert missing.returncode != 0 and "error NOT_FOUND" in missing.stderr
    card = stack.oms("dev", "card", "1234", check=False)
    assert card.returncode != 0 and card.stderr.startswith("error INVALID_REQUEST")


def test_change_and_approval_contract_through_oms_and_the_temporal_cli(
    running_stack: RunningStack,
) -> None:
    stack = running_stack
    pm = stack.oms("dev", "card", "4242424242424242").stdout.strip()
    sub = stack.oms_json(
        "subscribe",
        "--email",
        "chg@example.com",
        "--plan",
        "pro",
        "--quantity",
        "20",
        "--trial-days",
        "0",
        "--payment-method",
        pm,
    )["subscription_id"]

    sam = stack.token("--role", "operator", "--principal", "sam")
    up = stack.oms_json("change", sub, "--plan", "business", "--quantity", "20", token=sam)
    assert up["outcome"] == "applied" and up["request_id"] and up["effective_date"]
    assert [line["amount_minor"] < 0 for line in up["lines"]] == [True, False]
    assert all({"description", "amount_minor"} <= set(line) for line in up["lines"])

    down = stack.oms_json("change", sub, "--quantity", "5", "--request-id", "e2e-1", token=sam)
    assert down["outcome"] == "pending_approval"
    rid = down["request_id"]  # derived from the client's key, unique to this subscription
    again = stack.oms_json("change", sub, "--quantity", "5", "--request-id", "e2e-1", token=sam)
    assert again["request_id"] == rid
    listed = stack.oms_json("approvals", "list")
    assert {"request_id": rid, "subscription_id": sub}.items() <= next(
        a for a in listed if a["request_id"] == rid
    ).items()
    assert next(a for a in listed if a["request_id"] == rid)["deadline"]

    # sam, made an approver of the group, still may not approve sam's own request.
    sam = stack.token("--role", "approver", "--principal", "sam", "--groups", "billing-approvers")
    refused = stack.oms("approvals", "approve", rid, "--reason", "mine", check=False, token=sam)
    assert refused.returncode != 0 and "SELF_APPROVAL" in refused.stderr
    customer = stack.token("--role", "customer", "--customer", "cust_someone_else")
    hidden = stack.oms("status", sub, check=False, token=customer)
    assert hidden.returncode != 0 and "NOT_FOUND" in hidden.stderr

    # Ops can send the same decision with the temporal CLI (README: "Approving from the CLI").
    decided = subprocess.run(
        [
            str(Path(sys.executable).parent / "temporal"),
            "workflow",
            "update",
            "execute",
            "--address",
            stack.temporal,
            "--workflow-id",
            f"subscription:{sub}",
            "--name",
            "decide",
            "--input",
            json.dumps(
                {
                    "request_id": rid,
                    "approve": True,
                    "approver": "alice",
                    "reason": "customer downsized",
                    "channel": "temporal-cli",
                }
            ),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert decided.returncode == 0, decided.stderr
    assert "status:approved" in decided.stdout
    shown = stack.oms_json("approvals", "show", rid)
    assert shown["status"] == "approved" and shown["decided_by"] == "alice"
    pending = stack.oms_json("pending", sub)
    assert [c["request_id"] for c in pending["scheduled"]] == [rid]


def test_a_one_day_trial_s_ending_notice_arrives_by_email_within_seconds(
    running_stack: RunningStack,
) -> None:
    stack = running_stack
    pm = stack.oms("dev", "card", "4242424242424242").stdout.strip()
    created = stack.oms_json(
        "subscribe",
        "--email",
        "trial-mail@example.com",
        "--plan",
        "pro",
        "--trial-days",
        "1",
        "--payment-method",
        pm,
    )
    assert created["status"] == "trialing"
    deadline = time.monotonic() + 30
    mails: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not mails:
        mails = stack.oms_json("dev", "mail", "--to", "trial-mail@example.com")
        if not mails:
            time.sleep(0.5)
    assert mails, "no e-mail reached the dev mail sink within 30 s"
    [mail] = mails
    assert set(mail) >= {"to", "subject", "body", "sent_at"}
    assert "trial" in mail["subject"].lower() and "$30.00" in mail["body"]
    # The dev API's mailbox page shows it to an operator (a browser passes ?token=).
    page = httpx.get(
        f"{stack.api}/dev/mail",
        params={"to": "trial-mail@example.com", "token": stack.token("--role", "operator")},
        timeout=10,
    )
    assert page.status_code == 200 and mail["subject"] in html.unescape(page.text)
    assert httpx.get(f"{stack.api}/dev/mail", timeout=10).status_code == 401


def _code_from_mail(stack: RunningStack, address: str) -> str:
    """The one-time code of the newest enrollment e-mail to ``address`` (the dev mail sink)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mails = [
            m
            for m in stack.oms_json("dev", "mail", "--to", address)
            if "verification code" in m["subject"].lower()
        ]
        if mails:
            newest = max(mails, key=lambda m: m["sent_at"])
            match = re.search(r"\b(\d{6})\b", newest["subject"])
            assert match, newest["subject"]
            return match.group(1)
        time.sleep(0.3)
    raise AssertionError(f"no verification e-mail reached {address} within 30 s")


def test_enrollment_through_the_cli_with_the_code_from_the_mail_sink(
    running_stack: RunningStack,
) -> None:
    stack = running_stack
    terms = stack.oms_json("enroll", "terms")
    assert set(terms) >= {"terms_version", "privacy_version"}
    address = "enrollee-cli@example.com"
    started = stack.oms_json(
        "enroll",
        "start",
        "--email",
        address,
        "--name",
        "Grace Hopper",
        "--plan",
        "pro",
        "--interval",
        "monthly",
        "--accept-terms",
        terms["terms_version"],
    )
    assert started["status"] == "awaiting_verification"
    enrollment_id = started["enrollment_id"]
    # A wrong code is refused with its code and a non-zero exit.
    wrong = stack.oms("enroll", "verify", enrollment_id, "--code", "000000", "--json", check=False)
    code = _code_from_mail(stack, address)
    if code != "000000":
        assert wrong.returncode != 0
        assert json.loads(wrong.stdout or wrong.stderr)["error"]["code"] == "CODE_INVALID"
    verified = stack.oms_json("enroll", "verify", enrollment_id, "--code", code)
    assert verified["status"] == "awaiting_payment"
    pm = stack.oms("dev", "card", "4242424242424242").stdout.strip()
    paid = stack.oms_json("enroll", "pay", enrollment_id, "--payment-method", pm)
    assert paid["status"] in ("active", "trialing")
    assert paid["tenant_id"].startswith("tn_") and paid["customer_id"].startswith("cus_")
    assert paid["subscription_id"] and paid["first_invoice_date"]
    shown = stack.oms_json("enroll", "status", enrollment_id)
    assert shown["status"] == "enrolled"
    assert shown["subscription_id"] == paid["subscription_id"]
    # The subscription is an ordinary one, visible to the operator; the welcome e-mail follows.
    sub = stack.oms_json("status", paid["subscription_id"])
    assert sub["status"] == paid["status"]
    deadline = time.monotonic() + 30
    welcome: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not welcome:
        welcome = [
            m for m in stack.oms_json("dev", "mail", "--to", address) if "sign-in" in m["body"]
        ]
        time.sleep(0.3)
    assert welcome, "no welcome e-mail with a sign-in link"
    link = re.search(r"token=(sil_[A-Za-z0-9_-]+)", welcome[0]["body"])
    assert link, welcome[0]["body"]
    # The link signs the owner in once: a bearer token that sees the new subscription.
    signed_in = httpx.post(
        f"{stack.api}/auth/sign-in-link", json={"token": link.group(1)}, timeout=10
    )
    assert signed_in.status_code == 200, signed_in.text
    bearer = signed_in.json()["access_token"]
    mine = httpx.get(
        f"{stack.api}/subscriptions/{paid['subscription_id']}",
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )
    assert mine.status_code == 200, mine.text
    again = httpx.post(f"{stack.api}/auth/sign-in-link", json={"token": link.group(1)}, timeout=10)
    assert again.status_code in (401, 404), again.text


def test_enrollment_through_the_public_api_with_its_token(running_stack: RunningStack) -> None:
    stack = running_stack
    api = stack.api
    terms = httpx.get(f"{api}/enrollments/terms", timeout=10).json()
    address = "enrollee-api@example.com"
    started = httpx.post(
        f"{api}/enrollments",
        json={
            "email": address,
            "plan_id": "pro",
            "interval": "monthly",
            "currency": "USD",
            "terms_version": terms["terms_version"],
            "privacy_version": terms["privacy_version"],
        },
        timeout=10,
    )
    assert started.status_code in (200, 201), started.text
    body = started.json()
    eid, token = body["enrollment_id"], body["token"]
    headers = {"Enrollment-Token": token}
    # Without the token, or with another one, the enrollment does not exist.
    assert httpx.get(f"{api}/enrollments/{eid}", timeout=10).status_code == 401
    other = {"Enrollment-Token": "enrtok_" + "x" * 32}
    assert httpx.get(f"{api}/enrollments/{eid}", headers=other, timeout=10).status_code == 404
    code = _code_from_mail(stack, address)
    ok = httpx.post(f"{api}/enrollments/{eid}/verify", json={"code": code}, headers=headers)
    assert ok.status_code == 200 and ok.json()["status"] == "awaiting_payment", ok.text
    quote = httpx.get(f"{api}/enrollments/{eid}/quote", headers=headers, timeout=10)
    assert quote.status_code == 200, quote.text
    pm = stack.oms("dev", "card", "4242424242424242").stdout.strip()
    paid = httpx.post(
        f"{api}/enrollments/{eid}/payment-method",
        json={"payment_method_id": pm},
        headers=headers,
        timeout=60,
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] in ("active", "trialing")
