"""The load test's view of the machine: CPU of the server and of PostgreSQL, the server's
memory each second."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import status_kib
from bench.workload import LoadGauge

BACKEND_PID = "SELECT pg_backend_pid()"


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process, its children (a PostgreSQL server's backends) and its
    children that have ended."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(entry.name)
        except OSError:
            continue  # ended meanwhile
        if entry.name == str(root):
            ticks += sum(int(f) for f in fields[11:15])
        elif fields[1] == str(root):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def local_postmaster(db_url: str) -> int | None:
    """The pid of the PostgreSQL server behind ``db_url`` when it runs on this machine:
    the parent of the backend serving a connection."""
    conn = await asyncpg.connect(db_url)
    try:
        backend: int = await conn.fetchval(BACKEND_PID)
        return _postgres_parent(backend)
    finally:
        await conn.close()


def _postgres_parent(backend: int) -> int | None:
    try:
        parent = int(_stat(backend)[1])
        if Path(f"/proc/{parent}/comm").read_text().strip() in ("postgres", "postmaster"):
            return parent
    except (OSError, ValueError):
        pass
    return None


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass(frozen=True)
class MonitorSample:
    t: float  # seconds since the monitor started
    phase: str
    rss_kib: int
    in_flight: int
    done: int
    server_cpu: float  # cumulative CPU seconds of the server
    postgres_cpu: float  # of the PostgreSQL server (nan if not on this machine)
    client_cpu: float  # of this process
    machine: tuple[int, int]  # cumulative (busy, total) jiffies
    lag: float  # how late this sample came: the client's event loop was busy


class ServerMonitor:
    """Samples the server's RSS (VmRSS), the CPU of the server, PostgreSQL (given its
    postmaster's pid), this client process and the machine, and the requests in flight."""

    def __init__(
        self, pid: int, gauge: LoadGauge, interval: float = 1.0, postmaster: int | None = None
    ) -> None:
        self.pid = pid
        self.gauge = gauge
        self.interval = interval
        self.postmaster = postmaster
        self.phase = "start"
        self.samples: list[MonitorSample] = []
        self._began = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def sample(self, lag: float = 0.0) -> MonitorSample:
        s = MonitorSample(
            time.perf_counter() - self._began,
            self.phase,
            status_kib(self.pid, "VmRSS"),
            self.gauge.in_flight,
            self.gauge.done,
            cpu_seconds(self.pid),
            float("nan") if self.postmaster is None else tree_cpu_seconds(self.postmaster),
            time.process_time(),
            machine_jiffies(),
            lag,
        )
        self.samples.append(s)
        return s

    async def _run(self) -> None:
        due = time.perf_counter()
        while True:
            now = time.perf_counter()
            self.sample(max(0.0, now - due))
            due = now + self.interval
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._began = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def cpu(self, phase: str) -> dict[str, float]:
        """Cores used during a phase (from the sample before it to its last one) by the
        server, PostgreSQL, this client, other processes, and the machine's idle cores."""
        idx = [i for i, s in enumerate(self.samples) if s.phase == phase]
        if not idx:
            return {}
        a, b = self.samples[max(0, idx[0] - 1)], self.samples[idx[-1]]
        dt = b.t - a.t
        busy, total = (y - x for x, y in zip(a.machine, b.machine, strict=True))
        if dt <= 0 or total <= 0:
            return {}
        cores = os.cpu_count() or 1
        used = {
            "server": (b.server_cpu - a.server_cpu) / dt,
            "PostgreSQL": (b.postgres_cpu - a.postgres_cpu) / dt,
            "client": (b.client_cpu - a.client_cpu) / dt,
        }
        known = sum(v for v in used.values() if v == v)
        used["others"] = busy / total * cores - known
        used["idle"] = (1 - busy / total) * cores
        return used
