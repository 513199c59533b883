"""The coordinator's SQLite database: durable settings, versioned migrations, one writer.

Durability is the point: WAL with synchronous=FULL makes every COMMIT reach the disk before
it returns, so whatever the coordinator acknowledged after a commit survives kill -9 or a
power cut. All access goes through one aiosqlite connection guarded by one asyncio lock, so
a transaction never interleaves with statements of another coroutine.

Migrations are SQL files `NNNN_name.sql` shipped in fleet/coordinator/migrations/; each runs
in its own transaction together with the row that records it in `schema_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from fleet.log import get_logger

log = get_logger(__name__)

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


class DatabaseError(Exception):
    """The state database cannot be opened or migrated (the message says why)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def bundled_migrations() -> list[Migration]:
    """The migrations shipped with this package, in version order (gaps are an error)."""
    folder = resources.files("fleet.coordinator").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise DatabaseError(f"migration {migration.name}: expected version {expected:04d}")
    if not found:
        raise DatabaseError("no migrations found in fleet/coordinator/migrations")
    return found


Row = sqlite3.Row


class Database:
    """One SQLite connection; use `transaction()` to write and `fetch*` to read."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: str | Path, migrations: Sequence[Migration] | None = None
    ) -> Database:
        """Open (creating if needed) and migrate the database at `path` (":memory:" works)."""
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open state database {path}: {exc}") from exc
        db = cls(conn)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute("PRAGMA busy_timeout = 5000")
            if str(path) != ":memory:":
                cursor = await conn.execute("PRAGMA journal_mode = WAL")
                row = await cursor.fetchone()
                if row is None or str(row[0]).lower() != "wal":
                    raise DatabaseError(f"{path}: cannot switch to WAL journal mode")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await db.migrate(bundled_migrations() if migrations is None else migrations)
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT max(version) AS v FROM schema_version")
        return int(row["v"]) if row is not None and row["v"] is not None else 0

    async def migrate(self, migrations: Iterable[Migration]) -> list[int]:
        """Apply every migration newer than the recorded version; return those applied."""
        migrations = list(migrations)
        async with self._lock:
            await self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
        current = await self.schema_version()
        newest = max((m.version for m in migrations), default=0)
        if current > newest:
            raise DatabaseError(
                f"the state database has schema version {current}, newer than this fleet "
                f"knows ({newest}); refusing to run an older coordinator on it"
            )
        applied = []
        for migration in migrations:
            if migration.version <= current:
                continue
            async with self._lock:
                try:
                    # executescript runs the whole file; BEGIN/COMMIT around it make the
                    # migration and its schema_version row one atomic step.
                    await self._conn.executescript(
                        "BEGIN IMMEDIATE;\n"
                        + migration.sql
                        + "\nINSERT INTO schema_version (version, name, applied_at) VALUES ("
                        + f"{migration.version:d}, '{migration.name}', {time.time()!r});\n"
                        + "COMMIT;"
                    )
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        await self._conn.execute("ROLLBACK")
                    raise DatabaseError(f"migration {migration.name} failed: {exc}") from exc
            log.info("db_migrated", version=migration.version, name=migration.name)
            applied.append(migration.version)
        return applied

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT (durable on return), or ROLLBACK if the body raises."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            cursor = await self._conn.execute(sql, params)
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._lock:
            cursor = await self._conn.execute(sql, params)
            row: Row | None = await cursor.fetchone()
            return row


class Transaction:
    """Statements inside one open transaction (only valid within `Database.transaction`)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = await self._conn.execute(sql, params)
        return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cursor = await self._conn.execute(sql, params)
        row: Row | None = await cursor.fetchone()
        return row
