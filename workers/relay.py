"""The outbox relay process: ``python -m workers.relay`` (the dev stack starts one).

Sends due e-mails and webhook deliveries (activities/notify/relay.py) until SIGTERM or SIGINT.
Several relays may run at once: claims are leases in the outbox table (``FOR UPDATE SKIP LOCKED``
on PostgreSQL), so each row goes to one of them at a time.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from activities.db import create_db_engine
from activities.notify.relay import Relay
from workers.config import load_config
from workers.logs import configure_logging

log = structlog.get_logger(__name__)


async def serve() -> None:
    config = load_config()
    engine = create_db_engine(config.database.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Relay(engine, config.notifications).run(stop)
    finally:
        engine.dispose()
        log.info("relay.stopped")


def main() -> None:
    configure_logging()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
