"""``GET /kpis``: the billing KPIs over a date range, read from the database.

Mount with ``app.include_router(kpis_api.router)`` in :func:`starter.api.create_app`; the store
comes from the app's runtime (``request.app.state.rt.store``). The definitions are in
:mod:`models.kpis`; the figures are the same as ``oms kpis --json``.
"""

from __future__ import annotations

import asyncio
from datetime import date

import structlog
from fastapi import APIRouter, Query, Request
from sqlalchemy.exc import SQLAlchemyError

from activities.kpis import kpi_report
from activities.store import Store
from models.errors import ErrorCode, OmsError
from models.kpis import KpiReport

log = structlog.get_logger(__name__)

router = APIRouter(tags=["kpis"])


@router.get(
    "/kpis",
    summary="Renewal success, first-attempt failures, recovery by dunning step, churn",
    response_model=KpiReport,
)
async def get_kpis(
    request: Request,
    since: date | None = Query(None, description="first billing date included (YYYY-MM-DD)"),
    until: date | None = Query(None, description="first billing date excluded (YYYY-MM-DD)"),
) -> KpiReport:
    """The KPIs of invoices whose period starts in ``[since, until)`` (both optional)."""
    if since is not None and until is not None and since >= until:
        raise OmsError(ErrorCode.INVALID_REQUEST, "since must be before until")
    store: Store = request.app.state.rt.store
    try:
        report = await asyncio.to_thread(kpi_report, store, since, until)
    except SQLAlchemyError as err:
        raise OmsError(
            ErrorCode.DATABASE_UNAVAILABLE, f"the database could not be read: {err}"
        ) from err
    log.info(
        "api.kpis",
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
        renewals_due=report.renewals_due,
    )
    return report
