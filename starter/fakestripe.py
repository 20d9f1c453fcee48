"""Run localstripe (a stateful fake of the Stripe API) bound to loopback only.

localstripe's own entry point listens on every interface and keeps its state in a fixed
``/tmp/localstripe.pickle`` shared by every instance. This launcher binds 127.0.0.1 and keeps the
state in a file of our choosing (or nowhere), so tests can run several instances side by side and
the dev stack keeps its gateway data under ``.oms/`` between runs.

It also teaches localstripe two PaymentIntent parameters real Stripe accepts and our gateway sends
(see :func:`_accept_real_stripe_params`), so the gateway never has to branch on which server it
talks to.

Usage: ``python -m starter.fakestripe --port 8420 [--state .oms/localstripe.pickle]``; from Python,
:class:`FakeStripeProcess` runs it as a child process (the simulator, the chaos run, the tests).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

from starter.procs import ManagedProcess, free_port

# Values real Stripe accepts for ``off_session`` on a confirm besides a boolean.
_OFF_SESSION_WORDS = frozenset({"one_off", "recurring"})


def _bind_state(state_file: Path | None) -> None:
    from localstripe import resources

    store = resources.store

    def dump_to_disk() -> None:
        if state_file is None:
            return
        tmp = state_file.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(state_file)

    def try_load_from_disk() -> None:
        if state_file is None or not state_file.exists():
            return
        with state_file.open("rb") as f:
            saved = pickle.load(f)
        store.clear()
        store.update(saved)

    # Instance attributes shadow the methods that hard-code /tmp/localstripe.pickle.
    store.dump_to_disk = dump_to_disk  # type: ignore[method-assign]
    store.try_load_from_disk = try_load_from_disk  # type: ignore[method-assign]
    try_load_from_disk()


def _accept_real_stripe_params() -> None:
    """Make localstripe accept PaymentIntent parameters real Stripe accepts and we send.

    localstripe answers every parameter it does not implement with 400 "Unexpected <name>". Two of
    those are ones real Stripe needs from us:

    - ``description`` on ``POST /v1/payment_intents``: stored on the intent and returned (``null``
      when absent, as Stripe does), so it is visible like in the Stripe Dashboard.
    - ``off_session`` on ``POST /v1/payment_intents/{id}/confirm``: validated and ignored.

    Must run before ``localstripe.server`` is imported: it binds its routes at import time to
    the classmethods listed in ``resources.extra_apis``, so the confirm entry there is replaced.
    """
    if "localstripe.server" in sys.modules:
        raise RuntimeError("patch localstripe before importing localstripe.server")
    from localstripe import resources
    from localstripe.errors import UserError

    intent_cls: Any = resources.PaymentIntent
    original_init = intent_cls.__init__
    original_confirm = intent_cls._api_confirm.__func__

    def __init__(self: Any, description: object = None, **kwargs: Any) -> None:
        # Checked before the original __init__, which registers the object in the store.
        if description is not None and not isinstance(description, str):
            raise UserError(400, "Bad request")
        original_init(self, **kwargs)
        self.description = description

    def _api_confirm(cls: Any, /, id: str, off_session: object = None, **kwargs: Any) -> Any:
        converted = resources.try_convert_to_bool(off_session)
        if not (
            converted is None or isinstance(converted, bool) or converted in _OFF_SESSION_WORDS
        ):
            raise UserError(400, "Bad request")
        # Ignored on purpose: off_session only tells real Stripe that the customer is absent, so
        # it applies SCA exemptions for merchant-initiated charges and fails with
        # authentication_required rather than waiting for the customer. localstripe models no
        # exemptions; cards that need 3-D Secure go to requires_action whatever the flag says.
        return original_confirm(cls, id, **kwargs)

    intent_cls.__init__ = __init__
    # A class-level default, so intents created without one (or loaded from an older state file)
    # export ``description: null`` like real Stripe, and POST /v1/payment_intents/{id} may set it.
    intent_cls.description = None
    intent_cls._api_confirm = classmethod(_api_confirm)
    confirm_url = "/v1/payment_intents/{id}/confirm"
    for i, (method, url, _func) in enumerate(resources.extra_apis):
        if method == "POST" and url == confirm_url:
            resources.extra_apis[i] = (method, url, intent_cls._api_confirm)
            break
    else:
        raise RuntimeError(f"localstripe has no route {confirm_url}; its layout changed")


def command(port: int, state: Path | str | None = None) -> list[str]:
    """The command line that runs this module on ``port`` (with ``state`` as its state file)."""
    argv = [sys.executable, "-m", "starter.fakestripe", "--port", str(port)]
    if state is not None:
        argv += ["--state", str(state)]
    return argv


class FakeStripeProcess(ManagedProcess):
    """localstripe (this module) on a loopback port, stoppable and restartable.

    With a ``state`` file the data survives a stop, so a restart on the same port is a gateway
    outage, not a reset. Stop it with SIGTERM for that: the request in progress completes and the
    file is written. (localstripe also writes the file while it builds an object, so a SIGKILL in
    the middle of a request can leave a half-built object there that breaks its list endpoint.)
    :meth:`start` waits until it accepts connections; :meth:`pause` freezes it (SIGSTOP:
    connections are accepted by the kernel but never answered) and :meth:`resume` thaws it;
    ``stop(kill=True)`` is a SIGKILL. Its output is discarded.
    """

    def __init__(self, port: int | None = None, state: Path | None = None) -> None:
        self.state = state
        port = port or free_port()
        super().__init__(command(port, state), name="localstripe", port=port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--state", default=None, help="state file; omit to keep nothing")
    args = parser.parse_args(argv)

    state = Path(args.state) if args.state else None
    if state is not None:
        state.parent.mkdir(parents=True, exist_ok=True)
    _bind_state(state)
    _accept_real_stripe_params()

    from aiohttp import web
    from localstripe.server import app

    logging.basicConfig(level=logging.WARNING)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
