"""Which failures are transient (retried, then dead-lettered) and the error that ends retries."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.service import RPCError, RPCStatusCode

from models.errors import ErrorCode, OmsError

TRANSIENT = frozenset(
    {
        ErrorCode.TEMPORAL_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.GATEWAY_UNAVAILABLE,
        ErrorCode.TIMEOUT,
    }
)
TRANSIENT_RPC = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
    }
)


# What a caller is told about a dependency that failed: the cause's own text (addresses, driver
# messages) goes to the log and the dead letter's reason, never into a response.
PUBLIC_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.TEMPORAL_UNAVAILABLE: "the workflow service (Temporal) is not reachable",
    ErrorCode.DATABASE_UNAVAILABLE: "the database is not available",
    ErrorCode.GATEWAY_UNAVAILABLE: "the payment gateway is not reachable",
    ErrorCode.TIMEOUT: "a step did not finish in time",
}


def public_message(code: ErrorCode) -> str:
    """The sentence a response carries for a transient failure of ``code``."""
    return PUBLIC_MESSAGES.get(code, "a dependency is not available")


class _Unavailable(Exception):
    """A transient failure that outlasted the retries."""

    def __init__(self, code: ErrorCode, message: str, attempts: int) -> None:
        super().__init__(message)
        self.code, self.message, self.attempts = code, message, attempts


def classify(exc: BaseException) -> tuple[ErrorCode, str] | None:
    """(code, message) when ``exc`` is a transient failure worth retrying, else None."""
    if isinstance(exc, OmsError):
        return (exc.code, exc.message) if exc.code in TRANSIENT else None
    if isinstance(exc, RPCError):
        if exc.status in TRANSIENT_RPC:
            return ErrorCode.TEMPORAL_UNAVAILABLE, f"Temporal is not reachable: {exc.message}"
        return None
    if isinstance(exc, TimeoutError):
        return ErrorCode.TIMEOUT, "the step did not finish within the attempt time-out"
    if isinstance(exc, OperationalError | PoolTimeoutError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        first = str(exc).splitlines()[0][:200]
        return ErrorCode.DATABASE_UNAVAILABLE, f"the database is not available: {first}"
    return None
