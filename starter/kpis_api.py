"""``GET /kpis``: the billing KPIs over a date range, read from the database.

Mount with ``app.include_router(kpis_api.router)`` in :func:`starter.api.create_app`; the figures
are those of the caller's tenant. The definitions are in
:mod:`models.kpis`; the figures are the same as ``oms kpis --json``.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.exc import SQLAlchemyError

from activities.kpis import kpi_report
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal
from models.kpis import KpiReport
from starter.http import EDGE_ERRORS, current_principal

log = structlog.get_logger(__name__)

router = APIRouter(tags=["kpis"])


@router.get(
    "/kpis",
    summary="Renewal success, first-attempt failures, recovery by dunning step, churn",
    response_model=KpiReport,
    responses={**EDGE_ERRORS, 503: {"description": "DATABASE_UNAVAILABLE"}},
)
async def get_kpis(
    request: Request,
    principal: Annotated[Principal, Depends(current_principal)],
    since: date | None = Query(None, description="first billing date included (YYYY-MM-DD)"),
    until: date | None = Query(None, description="first billing date excluded (YYYY-MM-DD)"),
) -> KpiReport:
    """The KPIs of the caller's tenant, of invoices whose period starts in ``[since, until)``."""
    principal.require(Permission.KPIS_READ)
    if since is not None and until is not None and since >= until:
        raise OmsError(ErrorCode.INVALID_REQUEST, "since must be before until")
    store = request.app.state.rt.store
    try:
        report = await asyncio.to_thread(kpi_report, store, since, until, principal.tenant_id)
    except SQLAlchemyError as err:
        log.warning("api.kpis_unavailable", error=str(err))
        raise OmsError(ErrorCode.DATABASE_UNAVAILABLE, "the database could not be read") from err
    log.info(
        "api.kpis",
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
        renewals_due=report.renewals_due,
    )
    return report
