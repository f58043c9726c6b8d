"""``python -m bench churn``: connections opened and dropped by the million."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import httpx

from bench.common import log, migrated_database, server_url, start_service, status_kib


async def _churn_one(host: str, port: int, i: int, request: bytes) -> str | None:
    """One connection of the churn: what went wrong, or None."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"connect: {exc!r}"
    try:
        kind = i % 10
        if kind < 7:  # a whole request, read to the end, then close
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                return head.split(b"\r\n", 1)[0].decode("latin-1")
            await reader.read()
        elif kind < 9:  # half a request line, then gone
            writer.write(request[:9])
            await writer.drain()
        else:  # a request, then reset without reading the answer
            writer.write(request)
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        return None
    except (OSError, asyncio.IncompleteReadError) as exc:
        return repr(exc)
    finally:
        writer.close()


async def bench_churn(args: argparse.Namespace) -> int:
    """Connections opened and dropped as fast as one client process can: a whole request
    (70%), half a request line (20%) or a reset before the answer (10%). The server's open
    files and memory afterwards are compared with before (the baseline)."""
    url, _server = server_url(args)
    db_url = await migrated_database(url, "eventindex_churn")
    proc, base = start_service(db_url)
    host, port = base.removeprefix("http://").split(":")
    request = f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    try:
        fds_before = len(os.listdir(f"/proc/{proc.pid}/fd"))
        rss_before = status_kib(proc.pid, "VmRSS") / 1024
        errors: list[str] = []
        done = 0
        started = time.perf_counter()
        next_report = started + 10
        while done < args.connections:
            batch = min(args.concurrency, args.connections - done)
            results = await asyncio.gather(
                *(_churn_one(host, int(port), done + i, request) for i in range(batch))
            )
            errors += [r for r in results if r is not None]
            done += batch
            if time.perf_counter() > next_report:
                next_report += 10
                log(
                    f"  {done:,} connections, {done / (time.perf_counter() - started):,.0f}/s, "
                    f"server RSS {status_kib(proc.pid, 'VmRSS') / 1024:.0f} MiB, "
                    f"{len(os.listdir(f'/proc/{proc.pid}/fd'))} open files"
                )
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1)  # the server's side of the last closes
        fds_after = len(os.listdir(f"/proc/{proc.pid}/fd"))
        rss_after = status_kib(proc.pid, "VmRSS") / 1024
        peak = status_kib(proc.pid, "VmHWM") / 1024
        async with httpx.AsyncClient() as client:
            answer = (await client.get(base + args.path, timeout=10)).status_code
    finally:
        proc.terminate()
        proc.wait(30)
    print(
        f"churn: {done:,} connections ({args.concurrency} at a time) to {args.path} in "
        f"{elapsed:.1f} s = {done / elapsed:,.0f} connections/s"
    )
    print(
        f"server open files: {fds_before} before, {fds_after} after ({fds_after / fds_before:.2f}x)"
    )
    print(
        f"server RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
        f"({rss_after / rss_before:.2f}x), peak {peak:.0f} MiB"
    )
    print(f"errors on whole requests: {len(errors)}; the server answers afterwards: {answer}")
    for error in errors[:5]:
        print("  " + error)
    return 1 if errors or answer != 200 else 0
