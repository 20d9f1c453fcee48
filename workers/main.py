"""The worker process: registers the workflows and activities with their dependencies.

Usage: ``python -m workers.main`` (reads temporal-dev.yaml and OMS_* environment variables).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from activities.auth_store import AuthStore
from activities.db import create_db_engine
from activities.enrollment import EnrollmentActivities, OrderPort
from activities.gateway import StripeGateway
from activities.gateway_port import PaymentGateway
from activities.payments import PaymentActivities
from activities.store import Store, StoreActivities
from models.catalog import default_catalog
from models.policy import default_policy
from workers.config import DEV_ENROLLMENT_SECRET, Config, enrollment_secret, load_config
from workers.logs import configure_logging
from workflows.enrollment import EnrollmentWorkflow
from workflows.subscription import SubscriptionWorkflow

log = structlog.get_logger(__name__)

WORKFLOWS: Sequence[type] = (SubscriptionWorkflow, EnrollmentWorkflow)


async def connect(config: Config) -> Client:
    """A Temporal client with the project's data converter (the one place it is configured).

    A real cluster takes TLS (``temporal.tls``, a server CA), mTLS (a client certificate and key)
    and/or an API key (Temporal Cloud) from the configuration. The namespace is an operator trust
    boundary: whoever can reach it can signal and update workflows (docs/access.md).
    """
    t = config.temporal
    tls: TLSConfig | bool = False
    if t.tls or t.tls_server_ca_cert or t.tls_client_cert:

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        tls = TLSConfig(
            server_root_ca_cert=read(t.tls_server_ca_cert),
            client_cert=read(t.tls_client_cert),
            client_private_key=read(t.tls_client_key),
            domain=t.tls_server_name,
        )
    return await Client.connect(
        t.address,
        namespace=t.namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=t.api_key,
    )


def make_gateway(config: Config) -> StripeGateway:
    if not config.gateway.api_key:
        raise SystemExit("error CONFIG: OMS_STRIPE_API_KEY is not set")
    return StripeGateway(config.gateway.api_key, api_base=config.gateway.api_base)


@dataclass
class Dependencies:
    """What activities need, built once per process."""

    engine: Engine
    gateway: PaymentGateway
    # Enrollment (docs/enrollment.md): the key of its keyed hashes (shared with the API), where
    # its first order goes (by default order intake over this worker's client, built in
    # build_worker), and the links its e-mails carry.
    enrollment_key: bytes = DEV_ENROLLMENT_SECRET.encode()
    orders: OrderPort | None = None
    portal_url: str = "http://127.0.0.1:8000/portal"
    resume_url: str = "http://127.0.0.1:8000/portal/enroll"
    # Whether the order port built without a config (tests, the simulator) sets search
    # attributes; a worker run from its config always does.
    search_attributes: bool = False

    def activities(self) -> list[Any]:
        store = Store(self.engine)
        payments = PaymentActivities(self.gateway, store)
        st = StoreActivities(store)
        assert self.orders is not None, "build_worker provides the order port"
        enroll = EnrollmentActivities(
            self.engine,
            self.gateway,
            self.enrollment_key,
            self.orders,
            portal_url=self.portal_url,
            resume_url=self.resume_url,
        )
        return [
            enroll.send_code,
            enroll.code_failed,
            enroll.verified,
            enroll.setup_payment,
            enroll.provision,
            enroll.start_subscription,
            enroll.record,
            enroll.notify,
            enroll.expire,
            payments.provision_customer,
            payments.charge,
            payments.refund,
            payments.refresh_charge,
            st.record_transition,
            st.record_credit,
            st.record_approval,
            st.write_invoice,
            st.settle_invoice,
            st.enqueue_notification,
        ]


def build_worker(
    client: Client,
    task_queue: str,
    deps: Dependencies,
    executor: ThreadPoolExecutor,
    **options: Any,
) -> Worker:
    """The worker with every workflow and activity registered."""
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=20))
    # Load the shipped catalog and policy once, outside any workflow sandbox, and fail fast
    # on a bad document; workflows read these cached copies.
    default_policy().check_catalog(default_catalog())
    if deps.orders is None:
        deps = replace(deps, orders=intake_orders(client, task_queue, deps))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=deps.activities(),
        activity_executor=executor,
        **options,
    )


def intake_orders(
    client: Client, task_queue: str, deps: Dependencies, config: Config | None = None
) -> OrderPort:
    """Enrollment's order port: order intake over this worker's client, as every order goes
    (with a budget for a worker, not for an HTTP request)."""
    from activities.intake_store import IntakeStore
    from starter.context import make_service
    from starter.enrollment.orders import IntakeOrders
    from starter.intake.service import IntakeService
    from starter.intake.settings import load_intake_settings
    from starter.service import OmsService

    store = Store(deps.engine)
    if config is not None:
        oms = make_service(config, client, store)
    else:
        oms = OmsService(
            client,
            store,
            default_catalog(),
            task_queue=task_queue,
            search_attributes=deps.search_attributes,
        )

    async def service() -> OmsService:
        return oms

    settings = replace(
        load_intake_settings(config), budget_s=5.0, attempt_timeout_s=10.0, max_attempts=6
    )
    principals = AuthStore(deps.engine)
    intake = IntakeService(
        service, IntakeStore(deps.engine), default_catalog(), settings, principals=principals
    )
    return IntakeOrders(intake, service, principals)


async def run(config: Config) -> None:
    client = await connect(config)
    deps = Dependencies(
        create_db_engine(config.database.url),
        make_gateway(config),
        enrollment_key=enrollment_secret(config),
        portal_url=config.notifications.portal_url,
        resume_url=config.enrollment.resume_url,
    )
    deps = replace(deps, orders=intake_orders(client, config.temporal.task_queue, deps, config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=32) as executor:
        worker = build_worker(client, config.temporal.task_queue, deps, executor)
        log.info(
            "worker.started",
            address=config.temporal.address,
            namespace=config.temporal.namespace,
            task_queue=config.temporal.task_queue,
        )
        async with worker:
            await stop.wait()
            log.info("worker.stopping")
    deps.engine.dispose()
    log.info("worker.stopped")


def main() -> None:
    configure_logging()
    asyncio.run(run(load_config()))


if __name__ == "__main__":
    main()
