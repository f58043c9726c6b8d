"""What handlers are given: async dependencies over the lifespan's typed state.

A connection dependency acquires in one place and releases in the same place
after the handler has returned or raised (``scope="function"``: before the
response is sent, so a slow reader holds no connection). Streaming answers do
not use them: they own the connections they stream from (``streaming``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from eventindex.config import Settings
from eventindex.db import Connection, Database
from eventindex.ingest.collector import Collector
from eventindex.singles import SingleLookups


async def get_database(request: Request) -> Database:
    db: Database = request.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def get_collector(request: Request) -> Collector:
    collector: Collector = request.state.collector
    return collector


async def get_singles(request: Request) -> SingleLookups:
    singles: SingleLookups = request.state.singles
    return singles


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CollectorDep = Annotated[Collector, Depends(get_collector)]
SinglesDep = Annotated[SingleLookups, Depends(get_singles)]


async def read_connection(db: DatabaseDep) -> AsyncIterator[Connection]:
    """A connection of the read pool (replicas when configured)."""
    async with db.connection(read=True) as conn:
        yield conn


async def write_connection(db: DatabaseDep) -> AsyncIterator[Connection]:
    """A connection of the primary."""
    async with db.connection() as conn:
        yield conn


ReadConnection = Annotated[Connection, Depends(read_connection, scope="function")]
WriteConnection = Annotated[Connection, Depends(write_connection, scope="function")]
