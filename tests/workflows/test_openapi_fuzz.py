"""Schemathesis over the app's own ``/openapi.json``, in-process.

Every operation is fuzzed with generated requests, valid (positive) and invalid (negative), as an
operator (the ``/admin`` routes as an admin), and every answer must:

- never be a 5xx but a documented 503/504 (``not_a_server_error`` otherwise);
- have a status the operation documents (``status_code_conformance``);
- when it is an error, be ``{"error": {"code": ..., "message": ...}}``.

Two runs: on the real stack (time-skipping server, worker, DB, localstripe), where the routes of
one subscription are also fuzzed with its real id and its real approval request (random ids only
reach the 404 path); and with Temporal and the gateway down, where what needs them must answer a
documented 503.

Requests go through httpx on the test's event loop (the workflow worker runs there too) while
Hypothesis generates in a thread. Bounded: a few examples per operation and mode, derandomized
(the same examples every run, so a failure reproduces), no shrinking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.errors import FailureGroup
from sqlalchemy import Engine

from starter.api import create_app
from starter.intake import IntakeSettings
from tests.support.auth import headers_for, with_auth
from tests.workflows.conftest import TEST_API_KEY, Stack
from workers.config import Config

BASE_URL = "http://api"
DOWN = "http://127.0.0.1:1"  # nothing listens there: connections are refused at once
VISA = "4242424242424242"
# Health reports answer 503 with their own body ({ok, checks}): a report, not an error.
REPORTS = {"/health", "/health/ready"}
ALL_MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def error_shape(path: str, response: httpx.Response) -> str | None:
    """Why an error answer is not the one error shape (None when it is, or is no error)."""
    if response.status_code < 400 or path in REPORTS:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"no error object: {str(body)[:200]}"
    if not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str):
        return f"an error without a code and a message: {error}"
    return None


def checks_for(response: httpx.Response) -> list[Any]:
    # A documented 503 (a dependency is down) or 504 is an answer, not a crash.
    if response.status_code in (503, 504):
        return [status_code_conformance]
    return [not_a_server_error, status_code_conformance]


def httpx_kwargs(case: schemathesis.Case[Any], headers: dict[str, str]) -> dict[str, Any]:
    """A generated case as ``httpx.AsyncClient.request`` arguments (our credentials win)."""
    sent = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
    kwargs: dict[str, Any] = {
        "method": sent["method"],
        "url": sent["url"],
        "headers": {k: str(v) for k, v in (sent.get("headers") or {}).items()},
        "params": sent.get("params"),
    }
    if "json" in sent:
        kwargs["json"] = sent["json"]
    elif sent.get("data") is not None:
        data = sent["data"]
        kwargs["content" if isinstance(data, str | bytes) else "data"] = data
    if sent.get("cookies"):
        kwargs["cookies"] = sent["cookies"]
    return kwargs


@dataclass
class Fuzzer:
    """Runs an operation's generated cases through ``send``; collects the problems."""

    send: Callable[[dict[str, Any]], httpx.Response]
    operator: dict[str, str]
    admin: dict[str, str]
    examples: int
    problems: list[str] = field(default_factory=list)
    sent: int = 0

    def operation(
        self,
        operation: Any,
        modes: tuple[GenerationMode, ...] = ALL_MODES,
        path_parameters: dict[str, str] | None = None,
    ) -> None:
        headers = self.admin if operation.path.startswith("/admin") else self.operator
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            try:
                self._run(operation, mode, strategy, headers)()
            except Unsatisfiable:  # nothing to get wrong: no free parameters and no body
                assert mode == GenerationMode.NEGATIVE, operation.label

    def _run(
        self, operation: Any, mode: GenerationMode, strategy: Any, headers: dict[str, str]
    ) -> Callable[[], None]:
        @settings(
            max_examples=self.examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: schemathesis.Case[Any]) -> None:
            kwargs = httpx_kwargs(case, headers)
            response = self.send(kwargs)
            self.sent += 1
            where = f"{operation.label} [{mode.value}] {kwargs['method']} {response.url}"
            shape = error_shape(operation.path, response)
            if shape:
                self.problems.append(f"{where}: {response.status_code} {shape}")
            try:
                case.validate_response(response, checks=checks_for(response))
            except FailureGroup as group:
                first = "; ".join(str(e).strip().splitlines()[0] for e in group.exceptions)
                self.problems.append(
                    f"{where}: {response.status_code} {first}: {response.text[:200]}"
                )

        return run


async def fuzz(
    app: FastAPI,
    engine: Engine,
    examples: int,
    modes: tuple[GenerationMode, ...] = ALL_MODES,
    seeds: dict[str, str] | None = None,
) -> Fuzzer:
    """Fuzz every operation of ``app`` (served in-process), then, with ``seeds`` (path parameter
    -> a real id), the operations those parameters fill, again."""
    loop = asyncio.get_running_loop()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:

            def send(kwargs: dict[str, Any]) -> httpx.Response:
                future = asyncio.run_coroutine_threadsafe(client.request(**kwargs), loop)
                return future.result(timeout=60)

            doc = (await client.get("/openapi.json")).json()
            schema = schemathesis.openapi.from_dict(doc)
            fuzzer = Fuzzer(
                send,
                headers_for(engine, "operator", "fuzz-operator"),
                headers_for(engine, "admin", "fuzz-admin"),
                examples,
            )

            def run_all() -> None:
                operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
                for operation in operations:
                    fuzzer.operation(operation, modes)
                seeded = [
                    op
                    for op in operations
                    if {p.name for p in op.path_parameters} & set(seeds or {})
                    and {p.name for p in op.path_parameters} <= set(seeds or {})
                ]
                # Cancelling may end the subscription: last, so the others reach a live one.
                for operation in sorted(seeded, key=lambda op: op.path.endswith("/cancel")):
                    names = {p.name for p in operation.path_parameters}
                    params = {k: v for k, v in (seeds or {}).items() if k in names}
                    fuzzer.operation(operation, modes, path_parameters=params)

            await asyncio.to_thread(run_all)
    return fuzzer


def report(fuzzer: Fuzzer) -> str:
    problems = sorted(set(fuzzer.problems))
    return f"{len(problems)} problems in {fuzzer.sent} requests:\n" + "\n".join(problems)


def config(db_url: str, gateway: str, **sections: Any) -> Config:
    return Config.model_validate(
        with_auth(
            {
                "database": {"url": db_url},
                "gateway": {"api_base": gateway, "api_key": TEST_API_KEY},
                **sections,
            }
        )
    )


def intake_settings(tmp_path: Path) -> IntakeSettings:
    return IntakeSettings(
        webhook_secret="whsec_test_fuzz",
        spool_path=str(tmp_path / "spool.jsonl"),
        attempt_timeout_s=5.0,
    )


async def test_on_the_stack_every_answer_is_documented_and_in_the_error_shape(
    stack: Stack, db_url: str, localstripe_url: str, tmp_path: Path
) -> None:
    app = create_app(config(db_url, localstripe_url), service=stack.service)
    app.state.intake_settings = intake_settings(tmp_path)
    engine = stack.store.engine
    # One subscription with a pending approval request, for the seeded runs.
    ops = headers_for(engine, "operator", "fuzz-operator")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=ops) as c:
            pm = stack.gateway.create_test_payment_method(VISA)
            body = {"email": "fz@example.com", "plan_id": "pro", "quantity": 20, "trial_days": 0}
            created = await c.post("/subscriptions", json={**body, "payment_method_id": pm})
            sub = created.json()["subscription_id"]
            down = await c.post(f"/subscriptions/{sub}/changes", json={"quantity": 5})
            assert down.json()["outcome"] == "pending_approval", down.text
            seeds = {"subscription_id": sub, "request_id": down.json()["request_id"]}
    fuzzer = await fuzz(app, engine, examples=5, seeds=seeds)
    assert not fuzzer.problems, report(fuzzer)


async def test_with_temporal_and_the_gateway_down_every_answer_is_documented(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    app = create_app(config(db_url, DOWN, temporal={"address": DOWN.removeprefix("http://")}))
    app.state.intake_settings = intake_settings(tmp_path)
    fuzzer = await fuzz(app, engine, examples=3, modes=(GenerationMode.POSITIVE,))
    assert not fuzzer.problems, report(fuzzer)
