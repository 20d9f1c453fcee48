"""The dev stack launcher's pure parts, its process plumbing, and its refusal of busy ports.

None of these start Temporal, the worker or the API; they run in well under a few seconds.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from starter import devstack
from starter.devstack import Child, Console, DevstackError, PortUse, Stack
from starter.procs import ROOT, free_port, free_ports
from workers.config import Config, load_config


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something is listening on for the duration of the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def make_config(**ports: int) -> Config:
    """A config on free ports (overridable), so tests never touch the real defaults."""
    spare = iter(free_ports(4))
    chosen = {k: ports[k] if k in ports else next(spare) for k in ("grpc", "ui", "stripe", "api")}
    cfg = Config()
    cfg.temporal.address = f"127.0.0.1:{chosen['grpc']}"
    cfg.temporal.ui_port = chosen["ui"]
    cfg.gateway.localstripe_port = chosen["stripe"]
    cfg.api.port = chosen["api"]
    return cfg


def capture() -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(out, err), out, err


# ---- configuration and ports -------------------------------------------------------------------


def test_parse_address() -> None:
    assert devstack.parse_address("127.0.0.1:7233") == ("127.0.0.1", 7233)
    assert devstack.parse_address("[::1]:7233") == ("::1", 7233)
    for bad in ("127.0.0.1", "127.0.0.1:x", ":7233"):
        with pytest.raises(DevstackError) as err:
            devstack.parse_address(bad)
        assert err.value.exit_code == 2
        assert "OMS_TEMPORAL_ADDRESS" in err.value.line()


def test_planned_ports_follow_the_environment(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cfg = load_config(
        empty,
        env={
            "OMS_TEMPORAL_ADDRESS": "127.0.0.1:17233",
            "OMS_TEMPORAL_UI_PORT": "18233",
            "OMS_LOCALSTRIPE_PORT": "18420",
            "OMS_API_PORT": "18000",
            "OMS_MAIL_SINK_PORT": "18025",
        },
    )
    plan = devstack.planned_ports(cfg)
    assert [(p.port, p.env_var) for p in plan] == [
        (17233, "OMS_TEMPORAL_ADDRESS"),
        (18233, "OMS_TEMPORAL_UI_PORT"),
        (18420, "OMS_LOCALSTRIPE_PORT"),
        (18025, "OMS_MAIL_SINK_PORT"),
        (18000, "OMS_API_PORT"),
    ]


def test_port_is_free_sees_a_listener(listener: int) -> None:
    assert not devstack.port_is_free("127.0.0.1", listener)
    assert devstack.port_is_free("127.0.0.1", free_port())


def test_busy_ports_and_message(listener: int) -> None:
    cfg = make_config(ui=listener)
    busy = devstack.busy_ports(devstack.planned_ports(cfg))
    assert [p.port for p in busy] == [listener]
    assert devstack.port_in_use_message(busy[0]) == (
        f"error PORT_IN_USE: port {listener} (Temporal Web UI, temporal.ui_port / "
        "OMS_TEMPORAL_UI_PORT) is already in use"
    )


def test_message_names_the_setting() -> None:
    use = PortUse(8000, "127.0.0.1", "API", "api.port", "OMS_API_PORT")
    assert devstack.port_in_use_message(use) == (
        "error PORT_IN_USE: port 8000 (API, api.port / OMS_API_PORT) is already in use"
    )


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: setattr(c.temporal, "address", "temporal.example:7233"), "127.0.0.1:<port>"),
        (lambda c: setattr(c.api, "port", c.temporal.ui_port), "set for both"),
        (lambda c: setattr(c.api, "port", 70000), "out of range"),
        (lambda c: c.temporal.search_attributes.update(Foo="String"), "must be one of"),
        (lambda c: c.temporal.search_attributes.update({"bad-name": "Keyword"}), "identifier"),
    ],
)
def test_validate_config_rejects(mutate: Callable[[Config], object], needle: str) -> None:
    cfg = make_config()
    mutate(cfg)
    with pytest.raises(DevstackError) as err:
        devstack.validate_config(cfg)
    assert err.value.exit_code == 2
    assert needle in err.value.message


def test_validate_config_accepts_defaults() -> None:
    devstack.validate_config(Config())


# ---- commands and environment ------------------------------------------------------------------


def test_temporal_command() -> None:
    cfg = make_config(grpc=17233, ui=18233)
    cfg.temporal.namespace = "oms-dev"
    cfg.temporal.db_filename = "/tmp/x/temporal.db"
    argv = devstack.temporal_command(cfg, "/bin/temporal")
    assert argv[:3] == ["/bin/temporal", "server", "start-dev"]
    text = " ".join(argv)
    for part in (
        "--ip 127.0.0.1",
        "--port 17233",
        "--ui-port 18233",
        "--namespace oms-dev",
        "--db-filename /tmp/x/temporal.db",
        "--sqlite-pragma journal_mode=wal",
        "--sqlite-pragma synchronous=normal",
        "--log-level warn",
    ):
        assert part in text
    attrs = [argv[i + 1] for i, a in enumerate(argv) if a == "--search-attribute"]
    assert attrs == [f"{k}={v}" for k, v in cfg.temporal.search_attributes.items()]
    assert "NextBillingAt=Datetime" in attrs


def test_stripe_command_uses_port_and_state() -> None:
    cfg = make_config(stripe=18420)
    argv = devstack.stripe_command(cfg)
    assert argv[:3] == [sys.executable, "-m", "starter.fakestripe"]
    assert argv[3:] == ["--port", "18420", "--state", cfg.gateway.localstripe_state]


def test_effective_config_points_the_gateway_at_localstripe() -> None:
    cfg = make_config(stripe=18420)
    cfg.gateway.api_base = "http://127.0.0.1:8420"
    cfg.gateway.api_key = None
    eff = devstack.effective_config(cfg)
    assert eff.gateway.api_base == "http://127.0.0.1:18420"
    assert eff.gateway.api_key == devstack.DEFAULT_LOCAL_API_KEY
    assert cfg.gateway.api_base == "http://127.0.0.1:8420"  # the input is not changed


def test_child_env_round_trips_through_load_config(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    eff = devstack.effective_config(make_config())
    eff.database.url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    env = devstack.child_env(eff, {"PATH": "/bin", "OMS_API_PORT": "1"})
    assert env["PATH"] == "/bin"
    assert env["PYTHONUNBUFFERED"] == "1"
    seen = load_config(empty, env=env)
    assert seen.model_dump(exclude={"temporal": {"search_attributes"}}) == eff.model_dump(
        exclude={"temporal": {"search_attributes"}}
    )


# ---- output ------------------------------------------------------------------------------------


def test_summary_text() -> None:
    cfg = devstack.effective_config(make_config(grpc=17233, ui=18233, stripe=18420, api=18000))
    cfg.database.url = "postgresql+psycopg://oms:secret@db:5432/oms"
    text = devstack.summary_text(cfg)
    for needle in (
        "http://127.0.0.1:18233",
        "127.0.0.1:17233",
        "http://127.0.0.1:18000",
        "http://127.0.0.1:18000/docs",
        "http://127.0.0.1:18420",
        "postgresql+psycopg://oms:***@db:5432/oms",
        "oms dev card 4242424242424242",
        "oms subscribe",
    ):
        assert needle in text
    assert "secret" not in text


def test_prefixes_are_aligned_and_colored_only_on_request() -> None:
    names = ["temporal", "stripe", "worker", "api"]
    plain = [devstack.prefix(n, color=False) for n in names]
    assert plain == ["temporal | ", "stripe   | ", "worker   | ", "api      | "]
    colored = devstack.prefix("api", color=True)
    assert colored.startswith("\x1b[") and "api      |" in colored
    assert not Console(io.StringIO()).color


def test_search_attribute_plan_and_conflict_message() -> None:
    missing, conflicts = devstack.search_attribute_plan(
        {"A": "Keyword", "B": "Int", "C": "Text"}, {"A": "Keyword", "C": "Keyword"}
    )
    assert missing == {"B": "Int"}
    assert conflicts == {"C": ("Text", "Keyword")}
    msg = devstack.conflict_message(conflicts)
    assert "C is registered as Keyword but the config says Text" in msg
    assert "make clean-state" in msg


def test_describe_exit() -> None:
    assert devstack.describe_exit(3) == "exited with code 3"
    assert devstack.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


# ---- processes ---------------------------------------------------------------------------------


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_child_output_is_prefixed_and_stop_signals_its_group() -> None:
    console, out, _ = capture()
    code = "print('hello', flush=True); import time; time.sleep(60)"
    child = Child("worker", [sys.executable, "-c", code], os.environ, console)
    try:
        wait_until(lambda: "hello" in out.getvalue())
        assert os.getpgid(child.proc.pid) == child.proc.pid  # its own process group
    finally:
        child.stop(timeout=5)
    assert child.proc.returncode == -signal.SIGTERM
    assert "worker   | hello\n" in out.getvalue()


def test_stack_reports_a_child_that_died() -> None:
    console, _, _ = capture()
    stack = Stack(console=console, env=dict(os.environ))
    child = stack.start("stripe", [sys.executable, "-c", "raise SystemExit(3)"])
    wait_until(lambda: child.poll() is not None)
    with pytest.raises(DevstackError) as err:
        stack.check()
    assert err.value.line() == (
        "error CHILD_EXITED: stripe exited with code 3 unexpectedly; stopping the rest"
    )
    stack.stop_all()


def test_run_refuses_a_busy_port(
    listener: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    console, out, err = capture()
    assert devstack.run(make_config(api=listener), console=console) == 2
    assert err.getvalue() == (
        f"error PORT_IN_USE: port {listener} (API, api.port / OMS_API_PORT) is already in use\n"
    )
    assert out.getvalue() == ""
    assert not (tmp_path / ".oms").exists()  # nothing was started or created


def test_main_refuses_a_busy_port_with_one_line(listener: int, tmp_path: Path) -> None:
    ui, stripe, api = free_ports(3)
    env = {
        **os.environ,
        "OMS_TEMPORAL_ADDRESS": f"127.0.0.1:{listener}",
        "OMS_TEMPORAL_UI_PORT": str(ui),
        "OMS_LOCALSTRIPE_PORT": str(stripe),
        "OMS_API_PORT": str(api),
        "OMS_TEMPORAL_DB": str(tmp_path / "temporal.db"),
        "OMS_DATABASE_URL": f"sqlite:///{tmp_path / 'oms.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "starter.devstack"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stderr == (
        f"error PORT_IN_USE: port {listener} (Temporal gRPC, temporal.address / "
        "OMS_TEMPORAL_ADDRESS) is already in use\n"
    )
    assert "Traceback" not in done.stdout
