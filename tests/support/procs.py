"""Start and stop the real local servers the tests talk to.

Ports and child processes are handled by :mod:`starter.procs` (``free_port``, ``ManagedProcess``);
``ROOT`` and ``free_port`` are re-exported here for the tests that import them from this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starter.fakestripe import FakeStripeProcess
from starter.procs import ROOT, free_port

__all__ = ["ROOT", "free_port", "localstripe_server"]


@contextmanager
def localstripe_server() -> Iterator[str]:
    """A fresh localstripe process on a free loopback port; yields its base URL."""
    with FakeStripeProcess() as fake:
        yield fake.url
