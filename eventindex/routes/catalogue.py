"""What the catalogue holds: datasets and the names of the Online Filter decisions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from eventindex import queries
from eventindex.auth import require
from eventindex.db import PoolDep, SettingsDep, acquire
from eventindex.schemas import Dataset, OltBit

router = APIRouter(prefix="/v1", tags=["catalogue"], dependencies=[Depends(require("read"))])


@router.get("/datasets", response_model=list[Dataset], summary="All datasets")
async def list_datasets(pool: PoolDep, settings: SettingsDep) -> Any:
    async with acquire(pool, settings.pool_acquire_timeout) as conn:
        return [dict(r) for r in await conn.fetch(queries.LIST_DATASETS)]


@router.get(
    "/online-filter/bits",
    response_model=list[OltBit],
    summary="The Online Filter decisions: the bits of olt_result",
)
async def list_olt_bits(pool: PoolDep, settings: SettingsDep) -> Any:
    async with acquire(pool, settings.pool_acquire_timeout) as conn:
        return [dict(r) for r in await conn.fetch(queries.LIST_OLT_BITS)]
