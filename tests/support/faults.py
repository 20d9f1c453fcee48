"""Activity faults injected at the worker, for the fault matrix.

A ``FaultInterceptor`` wraps every activity the worker runs. For one activity type it injects one of
three faults into that type's N-th execution (counted per workflow, attempts not counted):

* ``refused``: a non-retryable ``DATA_ERROR`` on its first attempt (the activity never runs): what
  a database that rejects a write, or a gateway that rejects a request, looks like to the workflow;
* ``transient``: a retryable error on its first two attempts, then the real activity: an outage;
* ``killed``: the real activity runs, then its result is lost on the first attempt (a worker
  killed after the side effect, before reporting): the retry must find the effect, not repeat it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

MODES = ("refused", "transient", "killed")


@dataclass
class Fault:
    activity: str  # the activity type, e.g. "payments.charge"
    mode: str  # refused | transient | killed
    occurrence: int = 1  # which execution of that type (1 = the first)
    injected: int = 0  # how many times it fired
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    _ids: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def execution(self, info: activity.Info) -> int:
        """The 1-based number of this execution among the workflow's executions of its type."""
        key = (info.workflow_id or "", info.activity_type, info.activity_id)
        if key not in self._ids:
            self.seen[(info.workflow_id or "", info.activity_type)] += 1
            self._ids[key] = self.seen[(info.workflow_id or "", info.activity_type)]
        return self._ids[key]


class FaultInterceptor(Interceptor):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self.fault)


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, fault: Fault) -> None:
        super().__init__(next)
        self.fault = fault

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        fault = self.fault
        targeted = (
            info.activity_type == fault.activity and fault.execution(info) == fault.occurrence
        )
        if not targeted:
            return await self.next.execute_activity(input)
        if fault.mode == "refused" and info.attempt == 1:
            fault.injected += 1
            raise ApplicationError(
                "injected: the write was refused", type="DATA_ERROR", non_retryable=True
            )
        if fault.mode == "transient" and info.attempt <= 2:
            fault.injected += 1
            raise RuntimeError("injected: the service is unavailable")
        result = await self.next.execute_activity(input)
        if fault.mode == "killed" and info.attempt == 1:
            fault.injected += 1
            raise RuntimeError("injected: the worker died before reporting the result")
        return result
