"""The request-body spool keeps order and bounds its memory."""

from __future__ import annotations

import pytest

from eventindex.spool import BodyTooLarge, Spool


async def drain(spool: Spool) -> bytes:
    out = b""
    while chunk := await spool.read():
        out += chunk
    return out


async def test_order_kept_across_spill_to_disk() -> None:
    with Spool(memory_limit=100, total_limit=10**6) as spool:
        pieces = [bytes([65 + i % 26]) * 37 for i in range(200)]
        for p in pieces[:50]:
            spool.write(p)
        # Read some while spilled, then write more: order must hold across the switch.
        head = await spool.read()
        for p in pieces[50:]:
            spool.write(p)
        spool.finish()
        assert head + await drain(spool) == b"".join(pieces)
        assert spool._memory_size <= 100
    assert spool._file is None  # the temporary file went with the with-block


async def test_total_limit_fails_the_reader() -> None:
    with Spool(memory_limit=1024, total_limit=100) as spool:
        spool.write(b"x" * 60)
        spool.write(b"x" * 60)
        with pytest.raises(BodyTooLarge):
            await spool.read()
