"""The chaos run of ``tests/workflows/test_chaos.py`` at benchmark scale; prints its figures.

Usage (from the repository root)::

    .venv/bin/python -m bench.chaos --subscriptions 300 [--kills 8] [--outage-s 10] [--seed 1]
        [--window-s 90] [--outage-mode down|hang] [--json]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Everything runs locally (a ``temporal server start-dev``, localstripe, the worker in a
subprocess, SQLite in a temporary directory unless ``--database-url`` names an empty database).
Exits 1 when the reconciliation finds a double charge, an uncharged period, a payment row that
does not match the gateway, or a charge our books do not show. How it works:
``tests/support/chaos_harness.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from tests.support.chaos_harness import ChaosConfig, run_chaos
from workers.logs import configure_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--subscriptions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None, help="default: one per 10 s of window")
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument(
        "--outage-mode",
        choices=["down", "hang"],
        default="down",
        help="down: the gateway is killed and restarted; hang: it is frozen, requests hang",
    )
    parser.add_argument("--window-s", type=float, default=None)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level="WARNING", json=False)
    cfg = ChaosConfig(
        subscriptions=args.subscriptions,
        seed=args.seed,
        outage_s=args.outage_s,
        outage_mode=args.outage_mode,
        window_s=args.window_s,
    )
    cfg.kills = args.kills if args.kills is not None else max(3, round(cfg.window / 10))
    with tempfile.TemporaryDirectory(prefix="oms-chaos-") as tmp:
        db_url = args.database_url or f"sqlite:///{Path(tmp) / 'oms.db'}"
        report = asyncio.run(run_chaos(cfg, db_url, Path(tmp)))
    figures = report.figures()
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    else:
        print("\n".join(report.events))
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key.ljust(width)}  {value}")
    return 0 if report.reconciliation.ok else 1


if __name__ == "__main__":
    sys.exit(main())
