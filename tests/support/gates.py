"""Hold one activity execution open, so a test can send messages while the workflow is inside it.

``ActivityGate(activity_type, match)`` blocks the first execution of ``activity_type`` whose input
satisfies ``match`` until ``release()``; ``entered`` is set when it is held. Workflow tasks go on
meanwhile (updates are validated and accepted), which is exactly the race a real slow gateway or
database creates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor


class ActivityGate(Interceptor):
    def __init__(self, activity_type: str, match: Callable[[Any], bool] = lambda _: True) -> None:
        self.activity_type = activity_type
        self.match = match
        self.entered = asyncio.Event()
        self._release = asyncio.Event()
        self._held = False

    def release(self) -> None:
        self._release.set()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Held(next, self)


class _Held(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, gate: ActivityGate) -> None:
        super().__init__(next)
        self.gate = gate

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        gate = self.gate
        if (
            not gate._held
            and activity.info().activity_type == gate.activity_type
            and input.args
            and gate.match(input.args[0])
        ):
            gate._held = True
            gate.entered.set()
            await gate._release.wait()
        return await self.next.execute_activity(input)
