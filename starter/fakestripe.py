"""Run localstripe (a stateful fake of the Stripe API) bound to loopback only.

localstripe's own entry point listens on every interface and keeps its state in a fixed
``/tmp/localstripe.pickle`` shared by every instance. This launcher binds 127.0.0.1 and keeps the
state in a file of our choosing (or nowhere), so tests can run several instances side by side and
the dev stack keeps its gateway data under ``.oms/`` between runs.

Usage: ``python -m starter.fakestripe --port 8420 [--state .oms/localstripe.pickle]``
"""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path


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

    from aiohttp import web
    from localstripe.server import app

    logging.basicConfig(level=logging.WARNING)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
