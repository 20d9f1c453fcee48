"""Apply the Alembic migrations to the configured database.

Usage: ``python -m workers.migrate [upgrade|downgrade REV|current|revision -m MSG]`` (default:
upgrade to head). The URL comes from ``OMS_DATABASE_URL`` or temporal-dev.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig

from activities.db import normalize_url
from workers.config import load_config

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = load_config().database.url
    cfg = alembic_config(url)
    verb = args[0] if args else "upgrade"
    if verb == "upgrade":
        upgrade(url, args[1] if len(args) > 1 else "head")
    elif verb == "downgrade":
        command.downgrade(cfg, args[1])
    elif verb == "current":
        command.current(cfg)
    elif verb == "revision":
        command.revision(cfg, message=" ".join(args[2:]) or "change", autogenerate=True)
    else:
        print(f"error INVALID_REQUEST: unknown command {verb!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
