from __future__ import annotations

import uuid
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql

from watchroutes.backends.postgres import PostgresLog

from .._services import POSTGRES_URL, free_port, require
from .harness import Harness, Iter


@asynccontextmanager
async def harness() -> Iter:
    require("postgres")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)

    async def wipe() -> None:
        """Empty every table, the meta row included (as a restored or reset database)."""
        tables = [sql.Identifier(schema, name) for name in ("meta", "events", "state", "resources")]
        await admin.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))

    h = Harness(
        make=lambda: PostgresLog(POSTGRES_URL, schema=schema, poll_interval=0.2),
        wipe=wipe,
        dead=lambda: PostgresLog(
            f"postgresql://postgres@127.0.0.1:{free_port()}/test", timeout=1.0
        ),
        url=f"{POSTGRES_URL}?schema={schema}",
    )
    try:
        yield h
    finally:
        for backend in h.opened:
            await backend.close()
        await admin.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        await admin.close()
