"""Order intake benchmark: our p50/p95/p99 next to the bare Temporal floor, on the local stack.

Usage (from the repository root)::

    .venv/bin/python -m bench.intake [--rate 5] [--seconds 30] [--warmup 5] [--json-only]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--extra-workers N]

What it does, all on loopback and bounded in count and time:

1. starts the whole dev stack (``python -m starter.devstack``: Temporal dev server, localstripe,
   worker, API, migrations) on free ports with its state in a temporary directory; if that API does
   not serve ``POST /orders/{channel}`` yet, a second API process (``create_app`` + the intake
   router) is started next to it;
2. seeds credit accounts and stock, writes the principals the load authenticates as (an operator
   with a bearer token, the partner ``acme`` with an ``omsk_...`` API key; Stripe events carry only
   their signature), tokenizes test cards at localstripe and prepares a mixed stream of orders:
   valid web, mobile, signed Stripe Checkout, partner CSV, referral and physical orders, repeats of
   accepted orders, and invalid ones (a rule rejection, malformed payloads, a bad signature, an
   unknown SKU);
3. measures the floor: from a second process, a no-op workflow's update-with-start round trip on
   the same server (the same primitive ``POST /orders`` uses), answered by its own worker process,
   sent open-loop at the same rate;
4. from that second process, sends the order stream open-loop at ``--rate`` per second and records
   each answer's latency and status;
5. prints per-channel and overall percentiles and throughput, then, as the last line, one JSON
   object: ``p50_ms, p95_ms, p99_ms, floor_p50_ms, floor_p99_ms, ratio_p99, orders_per_s, ...``.

Internal roles (run by the benchmark itself): ``--role load``, ``--role floor-worker``,
``--role api``. Module-level code stays minimal: the floor worker's sandbox imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio import workflow

if TYPE_CHECKING:
    from starter.procs import ManagedProcess

MAX_SECONDS = 300
FLOOR_TASK_QUEUE = "bench-floor"


# --- the floor: a workflow that does nothing ---------------------------------------------


@workflow.defn(name="BenchNoop")
class BenchNoop:
    """Started by update-with-start; the update answers at once, then the workflow ends."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self, _: str) -> str:
        await workflow.wait_condition(lambda: self.done)
        return "ok"

    @workflow.update(name="ping")
    async def ping(self, value: str) -> str:
        self.done = True
        return value


# --- helpers ------------------------------------------------------------------------------


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[k]


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json_only:
        print(text, flush=True)


@dataclass
class Planned:
    """One request of the stream: what to send and what answer is right."""

    kind: str
    channel: str
    body: str
    expect: int
    sign: bool = False
    bad_signature: bool = False
    content_type: str = "application/json"


# --- the order stream ---------------------------------------------------------------------


def plan_stream(n: int, tokens: list[str], seed: int = 7) -> list[Planned]:
    """A reproducible mix of valid and invalid orders (valid ones use ``tokens`` in order)."""
    import random

    rng = random.Random(seed)
    kinds = [
        ("web", 28),
        ("mobile", 18),
        ("stripe", 12),
        ("partner", 10),
        ("referral", 5),
        ("beans", 5),
        ("repeat", 7),
        ("rule", 5),
        ("malformed", 4),
        ("badsig", 2),
        ("unknown_sku", 2),
        ("not_json", 2),
    ]
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    tok = iter(tokens)
    sent_ok: list[tuple[int, Planned]] = []
    out: list[Planned] = []
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        # Repeat only orders sent a while ago (a repeat racing its original may win the race).
        old = [q for j, q in sent_ok if j < i - 40]
        if kind == "repeat" and not old:
            kind = "web"
        tag = f"b{seed}-{i}"
        email = f"bench-{tag}@example.com"
        p: Planned
        if kind == "web":
            p = Planned(
                kind,
                "web",
                json.dumps(
                    {
                        "order_id": f"web-{tag}",
                        "currency": "USD",
                        "customer": {"email": email, "timezone": "Europe/London"},
                        "line": {
                            "plan_id": rng.choice(["starter", "pro", "business"]),
                            "interval": "monthly",
                            "quantity": rng.randint(1, 3),
                        },
                        "payment": {"method": "card", "token": next(tok)},
                    }
                ),
                201,
            )
        elif kind == "beans":
            p = Planned(
                kind,
                "web",
                json.dumps(
                    {
                        "order_id": f"beans-{tag}",
                        "customer": {"email": email},
                        "line": {"plan_id": "coffee-beans", "interval": "weekly", "quantity": 1},
                        "payment": {"method": "card", "token": next(tok)},
                    }
                ),
                201,
            )
        elif kind == "mobile":
            p = Planned(
                kind,
                "mobile",
                json.dumps(
                    {
                        "orderRef": f"app-{tag}",
                        "user": {"emailAddress": email, "tz": "Europe/Berlin", "locale": "de-DE"},
                        "device": {
                            "platform": rng.choice(["ios", "android"]),
                            "appVersion": "5.2.1",
                        },
                        "subscription": {"productId": "pro", "billingPeriod": "P1M", "qty": 1},
                        "paymentToken": next(tok),
                    }
                ),
                201,
            )
        elif kind == "stripe":
            p = Planned(
                kind,
                "stripe-checkout",
                json.dumps(
                    {
                        "id": f"evt_{tag.replace('-', '')}",
                        "object": "event",
                        "type": "checkout.session.completed",
                        "created": int(time.time()),
                        "livemode": False,
                        "data": {
                            "object": {
                                "id": f"cs_test_{tag.replace('-', '')}",
                                "object": "checkout.session",
                                "mode": "setup",
                                "status": "complete",
                                "payment_status": "no_payment_required",
                                "currency": "usd",
                                "customer_details": {"email": email},
                                "metadata": {
                                    "plan_id": "starter",
                                    "interval": "monthly",
                                    "payment_method_id": next(tok),
                                },
                            }
                        },
                    }
                ),
                201,
                sign=True,
            )
        elif kind == "partner":
            body = (
                "partner_id,partner_order_id,sku,quantity,customer_email,billing\n"
                f"acme,PO-{tag},OMS-PRO-M,{rng.randint(1, 20)},{email},invoice\n"
            )
            p = Planned(kind, "partner", body, 200, content_type="text/csv")
        elif kind == "referral":
            p = Planned(
                kind,
                "referral",
                json.dumps(
                    {
                        "program": "bench",
                        "batch_id": f"rb-{tag}",
                        "referrer": {"email": "champion@example.com"},
                        "bonus_credit_minor": 500,
                        "tier_upgrade": "pro",
                        "enrollments": [
                            {
                                "referral_id": tag,
                                "email": email,
                                "plan_id": "starter",
                                "payment_method_id": next(tok),
                            }
                        ],
                    }
                ),
                200,
            )
        elif kind == "repeat":
            earlier = rng.choice(old)
            p = Planned(
                "repeat",
                earlier.channel,
                earlier.body,
                200,
                sign=earlier.sign,
                content_type=earlier.content_type,
            )
        elif kind == "rule":  # enterprise plans are sold yearly only
            p = Planned(
                kind,
                "web",
                json.dumps(
                    {
                        "order_id": f"rule-{tag}",
                        "customer": {"email": email},
                        "line": {"plan_id": "enterprise", "interval": "monthly"},
                        "payment": {"method": "card", "token": "pm_notused000"},
                    }
                ),
                422,
            )
        elif kind == "malformed":
            p = Planned(
                kind,
                "mobile",
                json.dumps(
                    {
                        "orderRef": f"bad-{tag}",
                        "user": {"emailAddress": email},
                        "device": {"platform": "symbian", "appVersion": "1"},
                        "subscription": {"productId": "pro"},
                    }
                ),
                400,
            )
        elif kind == "badsig":
            p = Planned(
                kind,
                "stripe-checkout",
                json.dumps({"id": f"evt_x{i}", "type": "x"}),
                401,
                sign=True,
                bad_signature=True,
            )
        elif kind == "unknown_sku":
            body = (
                "partner_id,partner_order_id,sku,customer_email\n"
                f"acme,PO-{tag},OMS-GOLD-M,{email}\n"
            )
            p = Planned(kind, "partner", body, 200, content_type="text/csv")
        else:
            p = Planned("not_json", "web", '{"order_id": "x", ', 400)
        if kind in ("web", "mobile", "stripe", "partner", "referral", "beans"):
            sent_ok.append((i, p))
        out.append(p)
    return out


def tokens_needed(n: int) -> int:
    return n  # an upper bound: at most one card per planned order


# --- role: load generator (the second process) --------------------------------------------


async def _load(args: argparse.Namespace) -> None:
    import httpx
    from temporalio.client import Client, WithStartWorkflowOperation
    from temporalio.common import WorkflowIDConflictPolicy

    from models.channels.stripe_checkout import sign

    with open(args.plan) as f:
        plan = [Planned(**p) for p in json.load(f)]
    # Credentials come in the environment (not argv, which other users of the machine can read).
    operator = {"Authorization": f"Bearer {os.environ['OMS_BENCH_TOKEN']}"}
    partner = {"Authorization": f"Bearer {os.environ['OMS_BENCH_PARTNER_KEY']}"}
    rate = args.rate
    results: dict[str, Any] = {"floor": [], "floor_loaded": [], "orders": []}

    # 3. the floor, at the same rate
    client = await Client.connect(args.temporal)
    floor_n = min(len(plan), int(rate * args.floor_seconds))

    async def floor_one(i: int, into: str = "floor") -> None:
        op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            "BenchNoop",
            "x",
            id=f"bench-noop-{args.run}-{into}-{i}",
            task_queue=FLOOR_TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        t = time.perf_counter()
        await client.execute_update_with_start_workflow(
            "ping", "v", start_workflow_operation=op, id=f"ping-{i}", result_type=str
        )
        results[into].append((i, (time.perf_counter() - t) * 1000))

    await _open_loop(floor_n, rate, floor_one)

    # 4. the order stream
    await asyncio.sleep(1.0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=30) as http:

        async def send(i: int) -> None:
            p = plan[i]
            headers = {"Content-Type": p.content_type}
            if p.channel == "partner":
                headers.update(partner)
            elif p.channel != "stripe-checkout":  # Stripe events: their signature only
                headers.update(operator)
            if p.sign:
                secret = "whsec_wrong" if p.bad_signature else args.secret
                headers["Stripe-Signature"] = sign(p.body, secret, int(time.time()))
            t = time.perf_counter()
            try:
                r = await http.post(f"/orders/{p.channel}", content=p.body, headers=headers)
                status, text = r.status_code, r.text
            except httpx.HTTPError as err:
                status, text = 0, repr(err)
            ms = (time.perf_counter() - t) * 1000
            ok = status == p.expect
            if ok and p.kind in ("partner", "referral"):
                summary = json.loads(text)["summary"]
                ok = summary["accepted"] + summary["duplicate"] == 1
            if ok and p.kind == "unknown_sku":
                ok = json.loads(text)["summary"]["dead_lettered"] == 1
            results["orders"].append(
                {
                    "i": i,
                    "kind": p.kind,
                    "channel": p.channel,
                    "ms": ms,
                    "status": status,
                    "ok": ok,
                    "detail": "" if ok else text[:300],
                }
            )

        # The same no-op probe, sparser, while the orders flow: the floor under the same load.
        probe_rate = max(1.0, rate / 5)
        probe_n = int(len(plan) / rate * probe_rate)

        async def probe(i: int) -> None:
            await floor_one(i, "floor_loaded")

        t0 = time.perf_counter()
        await asyncio.gather(
            _open_loop(len(plan), rate, send), _open_loop(probe_n, probe_rate, probe)
        )
        results["elapsed_s"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(results, f)


async def _open_loop(n: int, rate: float, fn: Any) -> None:
    """Start ``fn(i)`` at ``t0 + i / rate`` whatever the earlier ones are doing (open loop)."""
    t0 = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fn(i)))
    await asyncio.gather(*tasks)


# --- role: floor worker -------------------------------------------------------------------


async def _floor_worker(args: argparse.Namespace) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    # Run as ``-m bench.intake`` this module is ``__main__``; the sandbox must import the
    # workflow's module by its real name.
    from bench.intake import BenchNoop as Noop

    client = await Client.connect(args.temporal)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=FLOOR_TASK_QUEUE, workflows=[Noop]):
        print("floor worker ready", flush=True)
        await stop.wait()


# --- role: api (when the dev stack's API does not mount the intake router yet) -------------


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from starter.api import create_app
    from starter.intake_api import mount
    from workers.config import load_config
    from workers.logs import configure_logging

    configure_logging()
    config = load_config()
    app = mount(create_app(config))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


# --- the benchmark ------------------------------------------------------------------------


class Procs:
    """Child processes, each logging to its own file, stopped together (SIGINT to each process
    group, then SIGKILL to those still running after 60 s)."""

    def __init__(self) -> None:
        self.procs: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: str) -> ManagedProcess:
        from starter.procs import ManagedProcess

        proc = ManagedProcess(
            argv,
            name=name,
            env=env,
            output=Path(log),
            own_group=True,
            stop_signal=signal.SIGINT,
        ).start()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        from starter.procs import stop_all

        stop_all(reversed(self.procs), timeout=60)


def _wait_for_line(path: str, needle: str, proc: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error BENCH: a child exited early; see {path}")
        with open(path) as f:
            if needle in f.read():
                return
        time.sleep(0.2)
    raise SystemExit(f"error BENCH: {needle!r} not seen in {path} after {timeout:.0f} s")


def _intake_mounted(url: str, token: str) -> bool:
    import httpx

    try:
        r = httpx.post(
            f"{url}/orders/bench-probe",
            content="{}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        return r.status_code == 404 and r.json().get("error", {}).get("code") == "UNKNOWN_CHANNEL"
    except Exception:
        return False


def _wait_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health/live", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"error BENCH: {url} did not answer")


def _credentials(env: dict[str, str], db_url: str) -> tuple[str, str]:
    """An operator's bearer token and the partner ``acme``'s API key, in the bench's database
    (the stack migrated it; signed with the dev key of the stack's config file)."""
    from activities.auth_store import AuthStore
    from activities.db import create_db_engine
    from models.identity import DEFAULT_TENANT, Principal, Role
    from starter.auth import Authenticator
    from workers.config import load_config

    engine = create_db_engine(db_url)
    try:
        store = AuthStore(engine)
        auth = Authenticator(load_config(env=env).auth, store)
        operator = store.put_principal(
            Principal(id="bench-operator", tenant_id=DEFAULT_TENANT, role=Role.OPERATOR)
        )
        store.put_principal(
            Principal(
                id="bench-partner-acme",
                tenant_id=DEFAULT_TENANT,
                role=Role.PARTNER,
                partner_id="acme",
                accounts=("acme",),
            )
        )
        return auth.issue(operator), auth.create_api_key("bench-partner-acme")
    finally:
        engine.dispose()


def _seed_and_tokens(env: dict[str, str], db_url: str, n_tokens: int) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from activities.db import create_db_engine
    from activities.gateway import StripeGateway
    from activities.intake_store import IntakeStore
    from starter.intake import DEMO_SEED, seed

    gateway = StripeGateway(
        env["OMS_STRIPE_API_KEY"], api_base=env["OMS_STRIPE_API_BASE"], max_network_retries=2
    )
    engine = create_db_engine(db_url)
    data = json.loads(json.dumps(DEMO_SEED))
    data["stock"] = {"BEANS-1KG": 1_000_000}
    for account in data["accounts"]:
        if account.get("account_id") == "acme":
            account["credit_limit_minor"] = 10**12
    asyncio.run(seed(IntakeStore(engine), data, gateway.create_test_payment_method))
    engine.dispose()
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(
            pool.map(
                lambda _: gateway.create_test_payment_method("4242424242424242"), range(n_tokens)
            )
        )


def _step_timings(*logs: str) -> dict[str, list[float]]:
    """claim/start/record milliseconds of accepted orders, from the API's JSON log lines."""
    steps: dict[str, list[float]] = {"claim_ms": [], "start_ms": [], "record_ms": [], "own_ms": []}
    for path in logs:
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                if '"intake.accepted"' not in line:
                    continue
                try:
                    event = json.loads(line[line.index("{") :])
                except ValueError:
                    continue
                for key in ("claim_ms", "start_ms", "record_ms"):
                    steps[key].append(float(event[key]))
                steps["own_ms"].append(float(event["claim_ms"]) + float(event["record_ms"]))
    return steps


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_percentile(values, 50), 1),
        "p95_ms": round(_percentile(values, 95), 1),
        "p99_ms": round(_percentile(values, 99), 1),
        "max_ms": round(max(values), 1) if values else float("nan"),
    }


def _load_average() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def bench(args: argparse.Namespace) -> int:
    from workers.logs import configure_logging

    configure_logging("WARNING", json=False)  # stdout is the report
    load_before = _load_average()
    if load_before > 0.5:
        _say(
            args,
            f"note: load average {load_before} before starting: other work on this "
            "machine will show in the figures",
        )
    seconds = min(args.seconds, MAX_SECONDS)
    n = int(args.rate * (seconds + args.warmup))
    warm = int(args.rate * args.warmup)
    tmp = tempfile.mkdtemp(prefix="oms-bench-")
    from starter.procs import free_ports

    ports = dict(zip(("grpc", "ui", "stripe", "api", "api2"), free_ports(5), strict=True))
    db_url = args.database_url or f"sqlite:///{tmp}/oms.db"
    schema = base_url = None
    if db_url.startswith("postgresql"):  # a fresh schema for this run, dropped afterwards
        from sqlalchemy import create_engine, text

        schema = f"bench_{os.path.basename(tmp).replace('-', '_')}"
        admin = create_engine(db_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        base_url = db_url
        db_url = f"{db_url}{'&' if '?' in db_url else '?'}options=-csearch_path%3D{schema}"
    env = {
        **os.environ,
        "OMS_CONFIG": os.path.join(_root(), "temporal-dev.yaml"),
        "OMS_TEMPORAL_ADDRESS": f"127.0.0.1:{ports['grpc']}",
        "OMS_TEMPORAL_UI_PORT": str(ports["ui"]),
        "OMS_TEMPORAL_DB": f"{tmp}/temporal.db",
        "OMS_LOCALSTRIPE_PORT": str(ports["stripe"]),
        "OMS_LOCALSTRIPE_STATE": f"{tmp}/localstripe.pickle",
        "OMS_STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "OMS_STRIPE_API_KEY": "sk_test_local",
        "OMS_API_PORT": str(ports["api"]),
        "OMS_DATABASE_URL": db_url,
        "OMS_INTAKE_SPOOL": f"{tmp}/spool.jsonl",
        # The bench measures latency, not the rate limiter: one operator sends every order.
        "OMS_RATE_LIMIT_PRINCIPAL": "1000000/minute",
        "OMS_RATE_LIMIT_IP": "1000000/minute",
        "NO_COLOR": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs = Procs()
    try:
        _say(args, f"starting the dev stack (state in {tmp}) ...")
        t = time.monotonic()
        stack = procs.start(
            "devstack", [sys.executable, "-m", "starter.devstack"], env, f"{tmp}/devstack.log"
        )
        _wait_for_line(f"{tmp}/devstack.log", "dev stack is up", stack, 180)
        token, partner_key = _credentials(env, db_url)
        url = f"http://127.0.0.1:{ports['api']}"
        if _intake_mounted(url, token):
            api_note = "the dev stack's API"
        else:
            url = f"http://127.0.0.1:{ports['api2']}"
            procs.start(
                "api",
                [
                    sys.executable,
                    "-m",
                    "bench.intake",
                    "--role",
                    "api",
                    "--port",
                    str(ports["api2"]),
                ],
                env,
                f"{tmp}/api.log",
            )
            _wait_http(url, 60)
            api_note = "a second API process with the intake router (not mounted in create_app yet)"
        _say(args, f"stack up in {time.monotonic() - t:.1f} s; orders go to {api_note} at {url}")

        for k in range(args.extra_workers):  # more worker processes on the same task queue
            procs.start(
                f"worker{k}", [sys.executable, "-m", "workers.main"], env, f"{tmp}/worker{k}.log"
            )
        floor = procs.start(
            "floor",
            [
                sys.executable,
                "-m",
                "bench.intake",
                "--role",
                "floor-worker",
                "--temporal",
                env["OMS_TEMPORAL_ADDRESS"],
            ],
            env,
            f"{tmp}/floor.log",
        )
        _wait_for_line(f"{tmp}/floor.log", "floor worker ready", floor, 60)

        _say(args, f"seeding accounts and stock, tokenizing {n} test cards ...")
        tokens = _seed_and_tokens(env, db_url, tokens_needed(n))
        plan = plan_stream(n, tokens)
        with open(f"{tmp}/plan.json", "w") as f:
            json.dump([p.__dict__ for p in plan], f)

        _say(
            args,
            f"floor: {int(args.rate * args.floor_seconds)} no-op update-with-start at "
            f"{args.rate}/s; then {n} orders at {args.rate}/s ({warm} warm-up) ...",
        )
        load = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.intake",
                "--role",
                "load",
                "--plan",
                f"{tmp}/plan.json",
                "--out",
                f"{tmp}/results.json",
                "--url",
                url,
                "--rate",
                str(args.rate),
                "--temporal",
                env["OMS_TEMPORAL_ADDRESS"],
                "--secret",
                "whsec_local",
                "--floor-seconds",
                str(args.floor_seconds),
                "--run",
                os.path.basename(tmp),
            ],
            env={**env, "OMS_BENCH_TOKEN": token, "OMS_BENCH_PARTNER_KEY": partner_key},
            cwd=_root(),
            timeout=MAX_SECONDS * 3,
            capture_output=True,
            text=True,
        )
        if load.returncode != 0:
            raise SystemExit(f"error BENCH: load generator failed:\n{load.stderr[-3000:]}")
        with open(f"{tmp}/results.json") as f:
            results = json.load(f)
        steps = _step_timings(f"{tmp}/api.log", f"{tmp}/devstack.log")
    finally:
        procs.stop()
        if schema is not None and base_url is not None:
            from sqlalchemy import create_engine, text

            admin = create_engine(base_url)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        if not args.json_only:
            print(f"(logs and state: {tmp})")

    floor_warm = int(args.rate * min(args.warmup, args.floor_seconds / 4))
    floor_ms = [ms for i, ms in results["floor"] if i >= floor_warm]
    probe_warm = int(max(1.0, args.rate / 5) * args.warmup)
    loaded_ms = [ms for i, ms in results["floor_loaded"] if i >= probe_warm]
    orders = [o for o in results["orders"] if o["i"] >= warm]
    wrong = [o for o in orders if not o["ok"]]
    ours = [o["ms"] for o in orders]
    measured_s = results["elapsed_s"] * len(orders) / max(1, len(results["orders"]))
    overall = _stats(ours)
    floor_stats = _stats(floor_ms)
    loaded_stats = _stats(loaded_ms)
    if not args.json_only:
        print("")
        print(f"{'group':<26}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        groups: dict[str, list[float]] = {}
        for o in orders:
            groups.setdefault(f"{o['channel']} ({o['kind']})", []).append(o["ms"])
        valid = [
            o["ms"]
            for o in orders
            if o["kind"] not in ("rule", "malformed", "badsig", "unknown_sku", "not_json")
        ]
        rows = [
            *sorted(groups.items()),
            ("valid + repeats", valid),
            ("ALL ORDERS", ours),
            ("FLOOR (no-op UwS)", floor_ms),
            ("FLOOR under the same load", loaded_ms),
        ]
        for name, values in rows:
            s = _stats(values)
            print(
                f"{name:<26}{s['n']:>6}{s['p50_ms']:>10}{s['p95_ms']:>10}{s['p99_ms']:>10}"
                f"{s['max_ms']:>10}"
            )
        print("\nwhere an accepted order's time goes (server side, from the API's log):")
        for key, label in (
            ("claim_ms", "intake: claim (rules + reserve, 1 tx)"),
            ("start_ms", "workflow update-with-start"),
            ("record_ms", "intake: record the answer (1 tx)"),
            ("own_ms", "intake's own DB work (claim + record)"),
        ):
            s = _stats(steps[key])
            print(f"  {label:<40} p50 {s['p50_ms']:>7} ms  p99 {s['p99_ms']:>7} ms")
        print(
            f"\nthroughput: {len(orders) / measured_s:.1f} orders/s offered {args.rate}/s; "
            f"answers not as expected: {len(wrong)}"
        )
        for o in wrong[:5]:
            print(f"  unexpected: {o['kind']} {o['channel']} -> {o['status']} {o['detail'][:160]}")
    summary = {
        "p50_ms": overall["p50_ms"],
        "p95_ms": overall["p95_ms"],
        "p99_ms": overall["p99_ms"],
        "floor_p50_ms": floor_stats["p50_ms"],
        "floor_p99_ms": floor_stats["p99_ms"],
        "ratio_p99": round(overall["p99_ms"] / floor_stats["p99_ms"], 2),
        "floor_loaded_p50_ms": loaded_stats["p50_ms"],
        "floor_loaded_p99_ms": loaded_stats["p99_ms"],
        "ratio_p99_loaded": round(overall["p99_ms"] / loaded_stats["p99_ms"], 2),
        "orders_per_s": round(len(orders) / measured_s, 1),
        "intake_own_p50_ms": _stats(steps["own_ms"])["p50_ms"],
        "intake_own_p99_ms": _stats(steps["own_ms"])["p99_ms"],
        "start_p50_ms": _stats(steps["start_ms"])["p50_ms"],
        "orders": len(orders),
        "unexpected": len(wrong),
        "rate": args.rate,
        "database": "postgresql" if schema else "sqlite",
        "extra_workers": args.extra_workers,
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
    }
    print(json.dumps(summary))
    return 0 if not wrong else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.intake", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=5.0, help="orders per second (open loop)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds (max 300)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--floor-seconds", type=float, default=20.0, help="seconds of floor")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--extra-workers", type=int, default=0, help="worker processes besides the dev stack's"
    )
    parser.add_argument(
        "--database-url",
        help="e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test (a schema of its own); "
        "default: SQLite in the run's directory",
    )
    parser.add_argument(
        "--role",
        choices=["bench", "load", "floor-worker", "api"],
        default="bench",
        help=argparse.SUPPRESS,
    )
    for internal in ("--plan", "--out", "--url", "--temporal", "--secret", "--run"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "load":
        asyncio.run(_load(args))
        return 0
    if args.role == "floor-worker":
        asyncio.run(_floor_worker(args))
        return 0
    if args.role == "api":
        _api(args)
        return 0
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
