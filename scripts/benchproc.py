"""The processes of a benchmark: children that serve, and the parent that measures them.

Shared by the benchmark scripts (``bench_exchange.py``, ``bench_soap.py``, ``bench_case.py``),
which are run as ``python scripts/bench_X.py``; this file is found next to them through
``sys.path[0]``. A child re-runs the benchmark script it was spawned from, never this module:
``spawn`` takes that script's path, because ``__file__`` here would name the wrong file.

Why children at all: on a 2-core machine a load generator sharing an event loop with the
servers would bill its own cost to them. So the servers run in child processes, the load
generator in the parent, and each child's CPU time and memory are read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import aiohttp
from aiohttp import web

from xroad_hub.demo.runner import Federation
from xroad_hub.federation import load_federation, parse_address
from xroad_hub.logs import configure_logging

# Exit status of a benchmark that runs children (bench_exchange, bench_soap).
EXIT_OK, EXIT_FAILED_REQUESTS, EXIT_NOT_STARTED, EXIT_INTERRUPTED = 0, 1, 2, 130
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartupError(RuntimeError):
    """A child did not start, or did not answer correctly, before the deadline."""


# --------------------------------------------------------------------------------------------
# /proc readings of the server processes
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (every thread), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces or ')'; the fixed fields start after the last ')'.
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":  # a zombie's counters are no longer its own to report
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of proc(5)


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_s: float  # utime + stime of the whole process (all threads, e.g. aiosqlite's writer)
    vm_hwm_kib: int  # peak resident set size
    vm_rss_kib: int  # current resident set size


def read_usage(pid: int) -> Usage | None:
    """The process's usage from /proc, or None once it has exited (or is a zombie)."""
    cpu = cpu_seconds(pid)
    if cpu is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    memory: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            memory[key] = int(rest.split()[0])
    if len(memory) < 2:  # a zombie has no memory left to report
        return None
    return Usage(cpu, memory["VmHWM"], memory["VmRSS"])


# --------------------------------------------------------------------------------------------
# Child side: the servers
# --------------------------------------------------------------------------------------------


async def until_stopped() -> None:
    """Return on SIGTERM/SIGINT, or once the parent is gone, so that a parent killed
    outright (a test timeout) leaves no servers behind."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while os.getppid() == parent and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def serve_app(app: web.Application, address: str) -> None:
    """Serve a demo backend on ``address`` until stopped, with the server settings the
    federation runner gives its demo backends, so that it behaves as under `xroad-hub up`."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        sock = socket.create_server(parse_address(address))
        await web.SockSite(runner, sock, shutdown_timeout=5.0).start()
        await until_stopped()
    finally:
        await runner.cleanup()


async def serve_federation(
    config: Path, log_level: str, only: str | None, *, metrics: bool = True
) -> None:
    """Run the components ``only`` (comma-separated; all when None) of the federation file
    ``config``, with certs/ and data/ next to it, until stopped (``metrics``: False, the
    nodes keep no metrics, to measure what they cost)."""
    # JSON lines to stderr (the child's log file), as `xroad-hub up` writes them.
    configure_logging(log_level, json=True)
    federation = Federation(
        load_federation(config),
        config.parent / "certs",
        config.parent / "data",
        only=frozenset(only.split(",")) if only else None,
        metrics=metrics,
    )
    try:
        await federation.start()
        await until_stopped()
    finally:
        await federation.stop()  # flushes the message logs as a real shutdown does


# --------------------------------------------------------------------------------------------
# Parent side: children
# --------------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    last_usage: Usage = Usage(0.0, 0, 0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def usage(self) -> Usage:
        """Current usage; after the process died, the last one seen (its CPU stops there)."""
        current = read_usage(self.pid)
        if current is not None:
            self.last_usage = current
        return self.last_usage

    def cpu(self) -> float:
        """CPU seconds so far; after the process died, the last reading (it stops there)."""
        return self.usage().cpu_s

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise StartupError(
                f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        self.log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def spawn(
    name: str,
    script: str | Path,
    args: Sequence[str],
    workdir: Path,
    env: dict[str, str] | None = None,
) -> Child:
    """Run ``python script *args`` with stderr to ``workdir/name.log``.

    ``script`` is the benchmark's own file (its ``__file__``), passed in because the child
    must re-run that script, not this module. ``env``: the child's environment (default:
    this process's).
    """
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(Path(script).resolve()), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        # A session of its own: Ctrl-C reaches the parent only, which then stops the
        # children in order and still reports, instead of every process racing to die.
        start_new_session=True,
        env=env,
    )
    return Child(name, proc, log_path, log_file)


def stop_children(children: Sequence[Child], timeout: float = 10.0) -> None:
    """SIGTERM to all first (they shut down in parallel), then wait for each in order."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        try:
            child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        child.log_file.close()


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM (e.g. a test timeout) takes the same way out as Ctrl-C: children are stopped.
    raise SystemExit(128 + signum)


def run_with_children(
    prog: str, workdir: Path, keep_workdir: bool, body: Callable[[list[Child]], int]
) -> int:
    """``body(children)``, which appends what it spawns to ``children``; afterwards, however
    it ended, the children are stopped and ``workdir`` is removed (unless kept).

    A child that did not start is exit status 2, an interruption 130, each with a line on
    stderr that starts with ``prog``.
    """
    children: list[Child] = []
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        return body(children)
    except StartupError as exc:
        print(f"{prog}: not started: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop_children(children)
        signal.signal(signal.SIGTERM, previous)
        if keep_workdir:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def wait_until_answers(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    child: Child,
    deadline: float,
) -> bytes:
    """Poll ``url`` until it answers 200; fail early if the child died or time ran out."""
    last = "no answer yet"
    while True:
        child.check_alive()
        try:
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return body
                last = f"HTTP {resp.status}: {body[:300]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise StartupError(
                f"{child.name} did not answer {url} in time; last: {last}\n{child.log_tail()}"
            )
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What a load generator's workers counted in one window."""

    issued: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank: an observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def finite(value: float, digits: int) -> float | None:
    """JSON has no NaN: a figure that could not be computed is null."""
    return round(value, digits) if math.isfinite(value) else None


def quotient(a: float, b: float) -> float:
    """a / b, NaN where b is zero (a phase with nothing measured)."""
    return a / b if b else math.nan


def spawn_federation(
    children: list[Child],
    script: str | Path,
    config: Path,
    log_level: str,
    workdir: Path,
    *,
    client_node: str,
    provider_node: str,
    one_process: bool,
    one_process_only: str | None = None,
    prefix: str = "",
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> None:
    """Start the federation of ``config`` as children of ``script`` (``--serve-federation``),
    appended to ``children`` one by one so that the caller stops whatever did start.

    ``one_process``: registry and nodes in one process (as `xroad-hub up` runs them), limited
    to ``one_process_only`` if given; otherwise each node in a process of its own, as one
    node per agency would run, with the registry riding along with the client's node.
    ``prefix`` names the children of one of several federations; ``extra``: more arguments
    for the children (``--no-metrics``); ``env``: their environment (another source tree).
    """
    serve = ["--serve-federation", str(config), "--log-level", log_level, *extra]
    if one_process:
        only = ["--only", one_process_only] if one_process_only else []
        children.append(spawn(f"{prefix}federation", script, [*serve, *only], workdir, env))
        return
    client = [*serve, "--only", f"registry,{client_node}"]
    children.append(spawn(f"{prefix}client-node", script, client, workdir, env))
    provider = [*serve, "--only", provider_node]
    children.append(spawn(f"{prefix}provider-node", script, provider, workdir, env))


def durable_commit_ms(directory: Path, commits: int = 40) -> float:
    """Median wall milliseconds of one durable SQLite commit (WAL, synchronous=FULL, one
    small row) in ``directory``, the message log's settings: each node waits for one before
    an answer leaves it, so two of these are the floor of what the hub adds at concurrency 1
    on this disk (the fsync, not the hub's code)."""
    import sqlite3
    import statistics

    path = directory / "commit-probe.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS probe (row BLOB)")
        times = []
        for _ in range(commits):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO probe VALUES (?)", (b"x" * 1024,))
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return statistics.median(times) * 1000
