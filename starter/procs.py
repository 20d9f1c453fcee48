"""Local child processes and loopback ports: the one place every launcher and test uses.

- :func:`free_port` / :func:`free_ports`: TCP ports free on loopback right now.
- :func:`port_open` / :func:`wait_for_port`: is something listening, and wait until it is.
- :class:`ManagedProcess`: one child process, started with an argv and environment, its output
  discarded, written to a log file or handed line by line to a callback; optionally waited for
  until it listens on a port; stopped gracefully (a signal), then killed if it does not exit in
  time. Also a context manager.
- :func:`stop_all`: stop several at once with one shared deadline.

Used by the dev stack (:mod:`starter.devstack`), the simulator's localstripe
(:class:`starter.fakestripe.FakeStripeProcess`), the benchmarks and the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_S = 0.05

# Where a child's merged stdout/stderr goes: nowhere (None), a log file, or a callback per line.
Output = Path | Callable[[str], None] | None


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct TCP ports free on ``host`` a moment ago (all held open while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` (loopback) right now."""
    return free_ports(1, host)[0]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_for_port(
    port: int,
    *,
    proc: subprocess.Popen[Any] | None = None,
    timeout: float = READY_TIMEOUT,
    host: str = LOOPBACK,
) -> None:
    """Block until something accepts connections on ``host:port``.

    Raises:
        RuntimeError: ``proc`` exited before the port opened.
        TimeoutError: nothing listened within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        if port_open(port, host):
            return
        time.sleep(POLL_S)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class ManagedProcess:
    """One child process: start, (wait for its port), pause/resume, stop gracefully then kill.

    Args:
        argv: The command line.
        name: A label for messages (default: ``argv[0]``).
        env: The child's whole environment (default: this process's).
        cwd: Its working directory (default: the repository root; None: ours).
        output: Where its merged stdout and stderr go: None discards them, a path is a log file
            (truncated at each start), a callable gets each line without its line ending (from a
            reader thread).
        port: If set, :meth:`start` waits until the child listens on this loopback port.
        ready_timeout: How long :meth:`start` waits for ``port``.
        own_group: Run it in a process group of its own and signal the whole group (its children
            too); a terminal's Ctrl-C then reaches only us.
        stop_signal: What :meth:`stop` sends first (SIGTERM; SIGINT for a Ctrl-C-style stop).
        stop_timeout: How long :meth:`stop` waits after that before SIGKILL.

    :meth:`start` may be called again after :meth:`stop` (same command, same port).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = ROOT,
        output: Output = None,
        port: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
        own_group: bool = False,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.argv = list(argv)
        self.name = name or self.argv[0]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.output = output
        self.port = port
        self.ready_timeout = ready_timeout
        self.own_group = own_group
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: threading.Thread | None = None
        self.stopping = threading.Event()  # set once a stop was asked for
        self._paused = False

    # --- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log file (``output`` a path), for error messages."""
        if not isinstance(self.output, Path) or not self.output.exists():
            return ""
        return self.output.read_text(errors="replace")[-chars:]

    # --- start ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start it (nothing if it runs) and, with ``port``, wait until it listens there.

        If it does not come up, it is killed and the error re-raised.
        """
        if self.running:
            return self
        self.stopping.clear()
        self._paused = False
        with contextlib.ExitStack() as scope:
            stdout: Any = subprocess.DEVNULL
            if isinstance(self.output, Path):  # the child keeps its own descriptor of the log
                stdout = scope.enter_context(self.output.open("wb"))
            elif self.output is not None:
                stdout = subprocess.PIPE
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                process_group=0 if self.own_group else None,
            )
        if callable(self.output):
            self.pump = threading.Thread(
                target=self._pump,
                args=(self.proc, self.output),
                name=f"pump-{self.name}",
                daemon=True,
            )
            self.pump.start()
        if self.port is not None:
            try:
                wait_for_port(self.port, proc=self.proc, timeout=self.ready_timeout)
            except BaseException:
                self.stop(kill=True)
                raise
        return self

    @staticmethod
    def _pump(proc: subprocess.Popen[bytes], line: Callable[[str], None]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for raw in iter(proc.stdout.readline, b""):
                line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    # --- signals -------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send ``sig`` (to its whole group with ``own_group``) if it still runs."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections are accepted by the kernel but never answered."""
        if self.running:
            self.signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self.running:
            self.signal(signal.SIGCONT)
        self._paused = False

    # --- stop ----------------------------------------------------------------------------

    def request_stop(self, *, kill: bool = False) -> None:
        """Send the stop signal (SIGKILL with ``kill``) without waiting; see :meth:`stop`."""
        self.stopping.set()
        if not self.running:
            return
        if self._paused:  # a frozen process would not act on the signal
            self.resume()
        self.signal(signal.SIGKILL if kill else self.stop_signal)

    def wait_or_kill(
        self, timeout: float | None = None, force: threading.Event | None = None
    ) -> int | None:
        """Wait up to ``timeout`` seconds (or until ``force`` is set) for it to exit, then kill
        it; also waits (briefly) for its output to be read. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        while proc.poll() is None and time.monotonic() < deadline:
            if force is not None and force.is_set():
                break
            time.sleep(POLL_S)
        if proc.poll() is None:
            self.killing()
            self.signal(signal.SIGKILL)
            proc.wait()
        if self.pump is not None:
            self.pump.join(timeout=2.0)
        return proc.returncode

    def stop(
        self,
        *,
        kill: bool = False,
        timeout: float | None = None,
        force: threading.Event | None = None,
    ) -> int | None:
        """Stop it: ``stop_signal`` (SIGKILL with ``kill``), wait up to ``timeout`` (default
        ``stop_timeout``) seconds or until ``force`` is set, then SIGKILL. Returns the exit code
        (None if it never started). Safe to call when it has already exited."""
        self.request_stop(kill=kill)
        return self.wait_or_kill(timeout, force)

    def killing(self) -> None:
        """Called just before a child that did not stop in time is killed (a hook)."""

    def wait(self) -> int:
        """Wait for it (started) to exit on its own and for its output to be read; the exit code."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        self.proc.wait()
        if self.pump is not None:
            self.pump.join(timeout=2.0)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: Iterable[ManagedProcess], timeout: float = STOP_TIMEOUT) -> None:
    """Ask every process to stop at once, then wait for all with one shared deadline (killing the
    stragglers when it passes). Processes are handled in the order given."""
    procs = list(procs)
    for p in procs:
        p.request_stop()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait_or_kill(max(0.1, deadline - time.monotonic()))
