"""The production worker with a fault-injecting gateway, run as its own process in crash tests.

It registers exactly what ``python -m workers.main`` registers (``Dependencies`` and
``build_worker``), but its gateway is :class:`HangAfterConfirmGateway`: the real ``StripeGateway``
with one fault layered on top. When armed, the first confirm whose idempotency key matches runs
for real (the money moves), then the activity thread writes a marker file and hangs, so the
outcome never reaches the database and the activity never completes. The test then SIGKILLs this
process: a worker crash at the worst instant.

The fault is armed through the environment, so a restarted worker with the same command line is
harmless once the marker exists:

- ``OMS_CRASH_MARKER``: path of the marker file; unset or existing means disarmed.
- ``OMS_CRASH_KEY_CONTAINS``: only confirms whose idempotency key contains this string trip it
  (default: any key).

From a test, :class:`WorkerProcess` starts it (log file, ready file, clean environment) and stops
or kills it. By hand::

    python -m tests.support.crash_worker --address 127.0.0.1:7233 --namespace default \\
        --task-queue tq --database-url sqlite:///x.db --stripe-api-base http://127.0.0.1:8420 \\
        [--stripe-api-key sk_test_...] [--ready-file PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from activities.db import create_db_engine
from activities.gateway import METADATA_IDEMPOTENCY_KEY, IntentInfo, StripeGateway
from starter.procs import ManagedProcess
from workers.config import Config, TemporalConfig
from workers.logs import configure_logging
from workers.main import Dependencies, build_worker, connect

log = structlog.get_logger(__name__)

MARKER_ENV = "OMS_CRASH_MARKER"
KEY_FILTER_ENV = "OMS_CRASH_KEY_CONTAINS"
HANG_SECONDS = 3600.0


class HangAfterConfirmGateway(StripeGateway):
    """A real gateway that, once, hangs right after a confirm succeeded at the gateway.

    Args:
        marker: The marker file; the fault is armed only while it does not exist.
        key_contains: Only confirms whose idempotency key contains this trip the fault.
        hang_seconds: How long the activity thread hangs (until the process is killed).
    """

    def __init__(
        self,
        *args: Any,
        marker: Path | None,
        key_contains: str = "",
        hang_seconds: float = HANG_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.marker = marker
        self.key_contains = key_contains
        self.hang_seconds = hang_seconds

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        info = super().confirm_payment_intent(
            intent_id, idempotency_key=idempotency_key, off_session=off_session
        )
        if self.key_contains in idempotency_key and self._claim_marker(info, idempotency_key):
            log.warning(
                "crash_worker.hanging_after_confirm",
                intent_id=info.id,
                status=info.status,
                idempotency_key=idempotency_key,
            )
            time.sleep(self.hang_seconds)
        return info

    def _claim_marker(self, info: IntentInfo, idempotency_key: str) -> bool:
        """Create the marker (with what was confirmed) unless it exists; True if created here.

        The content is written to a temporary file first and hard-linked into place, so the
        marker appears complete and at most one confirm ever claims it.
        """
        if self.marker is None:
            return False
        body = {
            "intent_id": info.id,
            "status": info.status,
            "attempt_key": info.metadata.get(METADATA_IDEMPOTENCY_KEY),
            "confirm_key": idempotency_key,
        }
        fd, tmp = tempfile.mkstemp(dir=self.marker.parent, prefix=".marker-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f)
            os.link(tmp, self.marker)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="Temporal frontend host:port")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--stripe-api-base", required=True, help="localstripe base URL")
    parser.add_argument("--stripe-api-key", default="sk_test_oms")
    parser.add_argument("--ready-file", default=None, help="touched once the worker polls")
    return parser.parse_args(argv)


def make_gateway(args: argparse.Namespace, env: dict[str, str]) -> HangAfterConfirmGateway:
    """The fault-injecting gateway, armed from ``env``."""
    marker = env.get(MARKER_ENV)
    return HangAfterConfirmGateway(
        args.stripe_api_key,
        api_base=args.stripe_api_base,
        marker=Path(marker) if marker else None,
        key_contains=env.get(KEY_FILTER_ENV, ""),
    )


async def run(args: argparse.Namespace) -> None:
    """Run the worker until SIGTERM/SIGINT (or until the test kills the process)."""
    config = Config(
        temporal=TemporalConfig(
            address=args.address, namespace=args.namespace, task_queue=args.task_queue
        )
    )
    client = await connect(config)
    deps = Dependencies(create_db_engine(args.database_url), make_gateway(args, dict(os.environ)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Like workers.main.run, but the pool is not joined on exit: a thread may be hanging.
    executor = ThreadPoolExecutor(max_workers=8)
    try:
        worker = build_worker(client, args.task_queue, deps, executor)
        async with worker:
            if args.ready_file:
                Path(args.ready_file).touch()
            log.info("crash_worker.ready", pid=os.getpid(), task_queue=args.task_queue)
            await stop.wait()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        deps.engine.dispose()


class WorkerProcess(ManagedProcess):
    """This module as a worker subprocess of a test: one start, output in ``<workdir>/<name>.log``.

    The parent's ``OMS_CRASH_*`` variables are dropped, so the fault is disarmed unless ``env``
    arms it. :meth:`start_ready` starts it and waits until it polls its task queue; ``stop()``
    asks it to stop (SIGTERM), ``stop(kill=True)`` is a crash (SIGKILL).
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        address: str,
        namespace: str,
        task_queue: str,
        database_url: str,
        stripe_api_base: str,
        stripe_api_key: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.ready_file = workdir / f"{name}.ready"
        self.log_path = workdir / f"{name}.log"
        argv = [
            sys.executable,
            "-m",
            "tests.support.crash_worker",
            "--address",
            address,
            "--namespace",
            namespace,
            "--task-queue",
            task_queue,
            "--database-url",
            database_url,
            "--stripe-api-base",
            stripe_api_base,
            "--stripe-api-key",
            stripe_api_key,
            "--ready-file",
            str(self.ready_file),
        ]
        clean = {k: v for k, v in os.environ.items() if k not in (MARKER_ENV, KEY_FILTER_ENV)}
        super().__init__(argv, name=name, env={**clean, **(env or {})}, output=self.log_path)

    async def start_ready(self, timeout: float) -> None:
        """Start it and wait (without blocking the loop) until it polls; killed if it does not.

        Raises:
            RuntimeError: it exited first (the message has its log).
            TimeoutError: it was not polling after ``timeout`` seconds.
        """
        self.ready_file.unlink(missing_ok=True)
        self.start()
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise TimeoutError(
                    f"worker {self.name} did not start in {timeout:.0f} s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    configure_logging(json=True)
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
