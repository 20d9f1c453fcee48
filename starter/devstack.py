"""The local dev stack: Temporal dev server, localstripe, the worker and the API in one terminal.

Usage: ``python -m starter.devstack`` (also ``make dev`` and ``oms dev up``).

What it does, in order:

1. Validates the configuration and checks that every port it will bind is free (exit 2 if not).
2. Creates ``.oms/`` (dev server database, localstripe state and the SQLite database live there
   between runs; ``make clean-state`` removes it).
3. Applies the database migrations (``python -m workers.migrate``).
4. Starts the Temporal dev server (with per-workflow time skipping allowed, for test clocks),
   waits until the namespace answers and makes sure every configured search attribute is
   registered; then localstripe, the worker and the API.
5. Re-prints every child's output with a prefix, prints a summary and waits.

Ctrl-C, SIGTERM or SIGHUP stops the children in reverse order (a second Ctrl-C kills them at
once). If any child exits on its own, the rest are stopped and the exit code is 1. Every child gets
the effective settings through the ``OMS_*`` environment variables, so all of them see the same
configuration. Children run in process groups of their own (so the terminal's Ctrl-C reaches only
the launcher) and, on Linux, get SIGTERM if the launcher dies without stopping them.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

from starter import fakestripe
from starter.procs import ManagedProcess, port_open
from workers.config import ENV_OVERRIDES, Config, load_config

STATE_DIR = Path(".oms")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
DEFAULT_LOCAL_API_KEY = "sk_test_local"

TEMPORAL_READY_TIMEOUT = 90.0
STRIPE_READY_TIMEOUT = 30.0
API_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Ctrl-C, kill, and a closed terminal all mean "stop the stack cleanly".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Types accepted by ``temporal server start-dev --search-attribute`` and AddSearchAttributes.
SEARCH_ATTRIBUTE_TYPES: dict[str, str] = {
    "Text": "INDEXED_VALUE_TYPE_TEXT",
    "Keyword": "INDEXED_VALUE_TYPE_KEYWORD",
    "Int": "INDEXED_VALUE_TYPE_INT",
    "Double": "INDEXED_VALUE_TYPE_DOUBLE",
    "Bool": "INDEXED_VALUE_TYPE_BOOL",
    "Datetime": "INDEXED_VALUE_TYPE_DATETIME",
    "KeywordList": "INDEXED_VALUE_TYPE_KEYWORD_LIST",
}

PREFIX_WIDTH = 8
COLORS: dict[str, str] = {
    "temporal": "36",  # cyan
    "stripe": "35",  # magenta
    "worker": "32",  # green
    "api": "33",  # yellow
    "migrate": "34",  # blue
}


class DevstackError(Exception):
    """A failure reported to the user as one line: ``error CODE: message``."""

    def __init__(self, code: str, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code

    def line(self) -> str:
        return f"error {self.code}: {self.message}"


# --------------------------------------------------------------------------------------------
# Pure parts: configuration checks, ports, commands, environment, summary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortUse:
    """A port the stack will bind, and how the user can change it."""

    port: int
    host: str
    label: str
    setting: str
    env_var: str


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` allowed); raise DevstackError CONFIG if malformed."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise DevstackError(
            "CONFIG",
            f"temporal.address / OMS_TEMPORAL_ADDRESS must be host:port, got {address!r}",
            exit_code=2,
        )
    return host, int(port_text)


def connect_host(host: str) -> str:
    """The host to dial for a server bound to ``host`` (wildcards become loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 literals get brackets)."""
    host = connect_host(host)
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def temporal_port(config: Config) -> int:
    return parse_address(config.temporal.address)[1]


def temporal_target(config: Config) -> str:
    """Address a client dials to reach the dev server this launcher starts."""
    return f"127.0.0.1:{temporal_port(config)}"


def gateway_url(config: Config) -> str:
    """Base URL of the localstripe this launcher starts."""
    return f"http://127.0.0.1:{config.gateway.localstripe_port}"


def api_url(config: Config) -> str:
    return f"http://{url_host(config.api.host)}:{config.api.port}"


def ui_url(config: Config) -> str:
    return f"http://127.0.0.1:{config.temporal.ui_port}"


def planned_ports(config: Config) -> list[PortUse]:
    """Every port the stack binds, in start order."""
    return [
        PortUse(
            temporal_port(config),
            "127.0.0.1",
            "Temporal gRPC",
            "temporal.address",
            "OMS_TEMPORAL_ADDRESS",
        ),
        PortUse(
            config.temporal.ui_port,
            "127.0.0.1",
            "Temporal Web UI",
            "temporal.ui_port",
            "OMS_TEMPORAL_UI_PORT",
        ),
        PortUse(
            config.gateway.localstripe_port,
            "127.0.0.1",
            "localstripe",
            "gateway.localstripe_port",
            "OMS_LOCALSTRIPE_PORT",
        ),
        PortUse(
            config.notifications.sink_port,
            "127.0.0.1",
            "SMTP sink",
            "notifications.sink_port",
            "OMS_MAIL_SINK_PORT",
        ),
        PortUse(config.api.port, config.api.host, "API", "api.port", "OMS_API_PORT"),
    ]


def validate_config(config: Config) -> None:
    """Reject settings the dev stack cannot run with, before anything starts (exit code 2)."""
    host, _ = parse_address(config.temporal.address)
    if host not in LOCAL_HOSTS:
        raise DevstackError(
            "CONFIG",
            f"the dev stack runs Temporal on this machine, so temporal.address / "
            f"OMS_TEMPORAL_ADDRESS must be 127.0.0.1:<port>, got {config.temporal.address!r}",
            exit_code=2,
        )
    seen: dict[int, PortUse] = {}
    for use in planned_ports(config):
        if not 1 <= use.port <= 65535:
            raise DevstackError(
                "CONFIG",
                f"port {use.port} ({use.label}, {use.setting} / {use.env_var}) is out of range",
                exit_code=2,
            )
        if use.port in seen:
            other = seen[use.port]
            raise DevstackError(
                "CONFIG",
                f"port {use.port} is set for both {other.label} ({other.env_var}) and "
                f"{use.label} ({use.env_var})",
                exit_code=2,
            )
        seen[use.port] = use
    for name, kind in config.temporal.search_attributes.items():
        if not name.isidentifier():
            raise DevstackError(
                "CONFIG",
                f"search attribute name {name!r} (temporal.search_attributes) is not an identifier",
                exit_code=2,
            )
        if kind not in SEARCH_ATTRIBUTE_TYPES:
            raise DevstackError(
                "CONFIG",
                f"search attribute {name} has type {kind!r}; temporal.search_attributes types "
                f"must be one of {', '.join(SEARCH_ATTRIBUTE_TYPES)}",
                exit_code=2,
            )


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and we could bind it ourselves."""
    dial = connect_host(host)
    try:
        infos = socket.getaddrinfo(dial, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        infos = []
    for family, socktype, proto, _, addr in infos:
        with socket.socket(family, socktype, proto) as s:
            s.settimeout(0.5)
            if s.connect_ex(addr) == 0:
                return False
    try:
        bind_infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return True  # unresolvable host: the server will report it; nothing we can check
    family, socktype, proto, _, addr = bind_infos[0]
    with socket.socket(family, socktype, proto) as s:
        # Servers set SO_REUSEADDR, so TIME_WAIT leftovers must not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return False
    return True


def busy_ports(
    plan: Iterable[PortUse], is_free: Callable[[str, int], bool] = port_is_free
) -> list[PortUse]:
    return [use for use in plan if not is_free(use.host, use.port)]


def port_in_use_message(use: PortUse) -> str:
    return (
        f"error PORT_IN_USE: port {use.port} ({use.label}, {use.setting} / {use.env_var}) "
        "is already in use"
    )


def effective_config(config: Config) -> Config:
    """The configuration the children get: the gateway is always the local localstripe."""
    eff = config.model_copy(deep=True)
    eff.gateway.api_base = gateway_url(config)
    # E-mail goes to the stack's own SMTP sink; links in it point at this API.
    eff.notifications.smtp_url = f"smtp://127.0.0.1:{config.notifications.sink_port}"
    eff.notifications.portal_url = f"{api_url(config)}/portal"
    if not eff.gateway.api_key:
        eff.gateway.api_key = DEFAULT_LOCAL_API_KEY
    return eff


def config_env(config: Config) -> dict[str, str]:
    """``config`` as the ``OMS_*`` variables ``load_config`` reads (None becomes "")."""
    env: dict[str, str] = {}
    for var, (section, key) in ENV_OVERRIDES.items():
        value = getattr(getattr(config, section), key)
        env[var] = "" if value is None else str(value)
    return env


def child_env(config: Config, base: Mapping[str, str]) -> dict[str, str]:
    """Environment for every child: ``base`` plus the effective settings, unbuffered output."""
    env = dict(base)
    env.update(config_env(config))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def temporal_command(config: Config, cli: str) -> list[str]:
    """``temporal server start-dev`` with our ports, namespace, state file and attributes."""
    from workers.servers import TIME_SKIPPING_ARGS

    t = config.temporal
    argv = [
        cli,
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(temporal_port(config)),
        "--ui-port",
        str(t.ui_port),
        "--namespace",
        t.namespace,
        "--db-filename",
        t.db_filename,
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--log-level",
        "warn",
    ]
    for name, kind in t.search_attributes.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    # Per-workflow time skipping, for test clocks (starter/clock.py). Workflows skip time only
    # when they carry a time-skipping config; the API refuses clocks unless temporal.test_clocks.
    argv += TIME_SKIPPING_ARGS
    return argv


def python_module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stripe_command(config: Config) -> list[str]:
    return fakestripe.command(config.gateway.localstripe_port, config.gateway.localstripe_state)


def mask_url(url: str) -> str:
    """A database URL with any password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def summary_text(config: Config) -> str:
    """The block printed once everything is up."""
    t = config.temporal
    api = api_url(config)
    rows = [
        ("Web UI", ui_url(config)),
        (
            "Temporal gRPC",
            f"{temporal_target(config)}  (namespace {t.namespace}, task queue {t.task_queue})",
        ),
        (
            "API",
            f"{api}  (docs: {api}/docs; Authorization: Bearer $(oms dev token --role operator))",
        ),
        (
            "Gateway",
            f"{gateway_url(config)}  (localstripe, state {config.gateway.localstripe_state})",
        ),
        ("Database", mask_url(config.database.url)),
        (
            "Mail",
            f"smtp://127.0.0.1:{config.notifications.sink_port} keeps every message in "
            f"{config.notifications.mail_dir}/  (oms dev mail)",
        ),
        ("State", f"{STATE_DIR}/  (make clean-state resets it)"),
    ]
    rule = "-" * 72
    lines = [rule, "Subscription OMS dev stack is up", ""]
    lines += [f"  {label:<14} {value}" for label, value in rows]
    lines += [
        "",
        "Try it (in another terminal):",
        "  oms dev card 4242424242424242      # a test card at the gateway",
        "  oms subscribe ...                  # then subscribe (oms subscribe --help)",
        "  oms dev token --role approver --principal carol   # act as someone else: OMS_TOKEN=...",
    ]
    if config.temporal.test_clocks:
        lines.append("  oms clock create                   # a test clock (docs/test-clocks.md)")
    lines += ["", "Ctrl-C stops everything.", rule]
    return "\n".join(lines)


def prefix(name: str, color: bool) -> str:
    """``name`` padded to the common width, then `` | ``; colored for terminals."""
    text = f"{name:<{PREFIX_WIDTH}} |"
    if color and name in COLORS:
        return f"\x1b[{COLORS[name]}m{text}\x1b[0m "
    return text + " "


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Console:
    """Serialized output shared by the launcher and the pump threads."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.color = self.out.isatty() and "NO_COLOR" not in os.environ
        self._lock = threading.Lock()

    def _write(self, stream: IO[str], text: str) -> None:
        with self._lock:
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # closed terminal or pipe: keep going
                pass

    def say(self, text: str) -> None:
        self._write(self.out, text + "\n")

    def error(self, text: str) -> None:
        self._write(self.err, text + "\n")

    def child_line(self, name: str, line: str) -> None:
        self._write(self.out, prefix(name, self.color) + line.rstrip("\r\n") + "\n")


def die_with_parent_prefix() -> list[str]:
    """Linux: run children under ``setpriv --pdeathsig TERM`` so that they are told to stop even
    if the launcher itself is killed (SIGKILL) and cannot stop them; elsewhere nothing."""
    if sys.platform != "linux":
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class Child(ManagedProcess):
    """A child process in its own process group whose merged output is re-printed."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        console: Console,
        stop_signal: int = signal.SIGTERM,
        shutdown_noise: Callable[[str], bool] | None = None,
    ) -> None:
        """Start ``argv`` now.

        Args:
            stop_signal: sent to the process group to ask it to stop.
            shutdown_noise: lines for which this is true are dropped once stopping began.
        """
        self.console = console
        self.shutdown_noise = shutdown_noise
        # own_group: the terminal's Ctrl-C reaches only the launcher, which then stops the
        # children itself, in order, exactly once.
        super().__init__(
            [*die_with_parent_prefix(), *argv],
            name=name,
            env=env,
            cwd=None,
            output=self._line,
            own_group=True,
            stop_signal=stop_signal,
            stop_timeout=STOP_TIMEOUT,
        )
        self.start()

    def _line(self, line: str) -> None:
        if self.stopping.is_set() and self.shutdown_noise is not None and self.shutdown_noise(line):
            return
        self.console.child_line(self.name, line)

    def killing(self) -> None:
        self.console.error(f"{self.name} did not stop in time; killing it")


def temporal_shutdown_noise(line: str) -> bool:
    """Once asked to stop, the dev server's internal pollers log a burst of WARN/ERROR lines
    ("graceful_stop", "context canceled") that mean nothing to the user; hide those."""
    return "level=WARN" in line or "level=ERROR" in line


@dataclass
class Stack:
    """The running children plus the stop/force flags the signal handler sets."""

    console: Console
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    force: threading.Event = field(default_factory=threading.Event)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        shutdown_noise: Callable[[str], bool] | None = None,
    ) -> Child:
        child = Child(name, argv, self.env, self.console, shutdown_noise=shutdown_noise)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise if a child has exited (they are all meant to run until we stop them)."""
        for child in self.children:
            code = child.poll()
            if code is not None:
                raise DevstackError(
                    "CHILD_EXITED",
                    f"{child.name} {describe_exit(code)} unexpectedly; stopping the rest",
                )

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float) -> bool:
        """Poll ``ready`` until true; False if a stop was requested. Raises on death/timeout."""
        deadline = time.monotonic() + timeout
        while not self.stop_requested.is_set():
            self.check()
            if ready():
                return True
            if time.monotonic() > deadline:
                raise DevstackError("TIMEOUT", f"{what} was not ready after {timeout:.0f} s")
            self.stop_requested.wait(0.25)
        return False

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop(force=self.force)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            self.force.set()
        self.stop_requested.set()


# --------------------------------------------------------------------------------------------
# Readiness probes
# --------------------------------------------------------------------------------------------


def tcp_answers(host: str, port: int) -> bool:
    return port_open(port, connect_host(host))


async def _namespace_ready(target: str, namespace: str) -> bool:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    try:
        client = await Client.connect(target, namespace=namespace)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=3)
        )
    except Exception:
        return False
    return True


def namespace_ready(config: Config) -> bool:
    """True when the dev server answers and the configured namespace exists."""
    if not tcp_answers("127.0.0.1", temporal_port(config)):
        return False
    return asyncio.run(_namespace_ready(temporal_target(config), config.temporal.namespace))


def search_attribute_plan(
    wanted: Mapping[str, str], existing: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Split ``wanted`` (name -> type) into (missing, conflicts name -> (wanted, existing))."""
    missing: dict[str, str] = {}
    conflicts: dict[str, tuple[str, str]] = {}
    for name, kind in wanted.items():
        have = existing.get(name)
        if have is None:
            missing[name] = kind
        elif have != kind:
            conflicts[name] = (kind, have)
    return missing, conflicts


def conflict_message(conflicts: Mapping[str, tuple[str, str]]) -> str:
    """Explain attributes registered with another type than temporal.search_attributes says."""
    detail = ", ".join(
        f"{name} is registered as {have} but the config says {want}"
        for name, (want, have) in conflicts.items()
    )
    return (
        f"search attribute {detail} (temporal.search_attributes); types cannot change on an "
        "existing dev server database: run `make clean-state` (loses dev data) or use a new name"
    )


async def _ensure_search_attributes(
    target: str, namespace: str, wanted: Mapping[str, str]
) -> list[str]:
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )
    from temporalio.client import Client

    names = {getattr(IndexedValueType, enum): kind for kind, enum in SEARCH_ATTRIBUTE_TYPES.items()}
    client = await Client.connect(target, namespace=namespace)

    async def existing() -> dict[str, str]:
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        return {k: names.get(v, str(v)) for k, v in resp.custom_attributes.items()}

    added: list[str] = []
    for _attempt in range(3):
        missing, conflicts = search_attribute_plan(wanted, await existing())
        if conflicts:
            raise DevstackError("SEARCH_ATTRIBUTE_CONFLICT", conflict_message(conflicts))
        if not missing:
            return added
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=namespace,
                    search_attributes={
                        n: getattr(IndexedValueType, SEARCH_ATTRIBUTE_TYPES[k])
                        for n, k in missing.items()
                    },
                )
            )
            added += list(missing)
        except Exception:
            # The dev server may be registering the same attributes from its flags right now
            # ("already exists"); list again and decide from what is actually there.
            await asyncio.sleep(0.5)
    missing, _ = search_attribute_plan(wanted, await existing())
    if missing:
        raise DevstackError(
            "SEARCH_ATTRIBUTE",
            f"could not register search attributes {', '.join(missing)} on {target}",
        )
    return added


def ensure_search_attributes(config: Config) -> list[str]:
    """Register every configured attribute that the dev server lacks; returns those added.

    ``start-dev --search-attribute`` registers attributes when the database is new, and on a
    restart it accepts the same flags but silently skips attributes added to the config since,
    so the launcher always checks and adds what is missing.
    """
    return asyncio.run(
        _ensure_search_attributes(
            temporal_target(config), config.temporal.namespace, config.temporal.search_attributes
        )
    )


def api_answers(config: Config) -> bool:
    """True once ``GET /health/live`` gets any HTTP response."""
    import httpx

    try:
        httpx.get(f"{api_url(config)}/health/live", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------------


def _preflight(config: Config, console: Console) -> tuple[Config, str] | int:
    """Checks before anything starts: config, ports, the CLI. Returns (effective, cli) or a code."""
    from workers.servers import temporal_cli_path

    try:
        validate_config(config)
    except DevstackError as exc:
        console.error(exc.line())
        return exc.exit_code
    busy = busy_ports(planned_ports(config))
    if busy:
        for use in busy:
            console.error(port_in_use_message(use))
        return 2
    try:
        cli = temporal_cli_path()
    except FileNotFoundError as exc:
        console.error(f"error TEMPORAL_CLI_MISSING: {exc}")
        return 2
    eff = effective_config(config)
    if config.gateway.api_base and config.gateway.api_base.rstrip("/") != eff.gateway.api_base:
        console.say(
            f"note: gateway.api_base {config.gateway.api_base} replaced by the local "
            f"localstripe at {eff.gateway.api_base} for this stack"
        )
    return eff, cli


def _prepare_dirs(config: Config) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    for path in (config.temporal.db_filename, config.gateway.localstripe_state):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(config.notifications.mail_dir).mkdir(parents=True, exist_ok=True)


def _migrate(stack: Stack) -> bool:
    """Run the migrations to completion; False if a stop was requested meanwhile."""
    child = Child("migrate", python_module_command("workers.migrate"), stack.env, stack.console)
    while child.poll() is None:
        if stack.stop_requested.wait(0.1):
            child.stop(force=stack.force)
            return False
    code = child.wait()  # it has exited; this collects the rest of its output
    if code != 0:
        raise DevstackError(
            "MIGRATE_FAILED",
            f"`python -m workers.migrate` {describe_exit(code)}; see its output above "
            "(database.url / OMS_DATABASE_URL)",
        )
    return True


def _start_all(stack: Stack, config: Config, cli: str) -> bool:
    """Start every service in order; False if a stop was requested before all were up."""
    say = stack.console.say
    if not _migrate(stack):
        return False

    say(f"starting Temporal dev server on {temporal_target(config)} ...")
    stack.start("temporal", temporal_command(config, cli), temporal_shutdown_noise)
    if not stack.wait_for(
        f"Temporal namespace {config.temporal.namespace!r} on {temporal_target(config)}",
        lambda: namespace_ready(config),
        TEMPORAL_READY_TIMEOUT,
    ):
        return False
    added = ensure_search_attributes(config)
    if added:
        say(f"registered search attributes: {', '.join(added)}")

    stack.start("stripe", stripe_command(config))
    if not stack.wait_for(
        f"localstripe on port {config.gateway.localstripe_port}",
        lambda: tcp_answers("127.0.0.1", config.gateway.localstripe_port),
        STRIPE_READY_TIMEOUT,
    ):
        return False

    mail = config.notifications
    stack.start(
        "mail",
        python_module_command(
            "starter.mailsink", "--dir", mail.mail_dir, "--port", str(mail.sink_port)
        ),
    )
    if not stack.wait_for(
        f"SMTP sink on port {mail.sink_port}",
        lambda: tcp_answers("127.0.0.1", mail.sink_port),
        STRIPE_READY_TIMEOUT,
    ):
        return False

    stack.start("worker", python_module_command("workers.main"))
    stack.start("relay", python_module_command("workers.relay"))
    stack.start("api", python_module_command("starter.api"))
    return stack.wait_for(
        f"API at {api_url(config)}/health", lambda: api_answers(config), API_READY_TIMEOUT
    )


def run(config: Config, *, console: Console | None = None) -> int:
    """Run the whole stack in the foreground until Ctrl-C/SIGTERM; returns the exit code."""
    console = console or Console()
    pre = _preflight(config, console)
    if isinstance(pre, int):
        return pre
    eff, cli = pre
    _prepare_dirs(eff)

    stack = Stack(console=console, env=child_env(eff, os.environ))
    handlers: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signal.signal needs it
        for sig in STOP_SIGNALS:
            handlers[sig] = signal.signal(sig, stack.on_signal)
    try:
        try:
            if _start_all(stack, eff, cli):
                console.say(summary_text(eff))
                while not stack.stop_requested.wait(0.25):
                    stack.check()
        except DevstackError as exc:
            console.error(exc.line())
            stack.stop_all()
            return exc.exit_code
        except Exception as exc:  # never a stack trace for the user; still stop everything
            console.error(f"error INTERNAL: {type(exc).__name__}: {exc}")
            stack.stop_all()
            return 1
        console.say("stopping ...")
        stack.stop_all()
        console.say("stopped")
        return 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m starter.devstack``."""
    parser = argparse.ArgumentParser(
        prog="python -m starter.devstack",
        description="Run Temporal, localstripe, the worker and the API locally "
        "(settings: temporal-dev.yaml / OMS_* variables).",
    )
    parser.parse_args(argv)
    try:
        config = load_config()
    except Exception as exc:
        detail = " ".join(str(exc).split())
        print(f"error CONFIG: {type(exc).__name__}: {detail}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(config))


if __name__ == "__main__":
    main()
