"""State database: durable settings, versioned migrations applied once, append-only audit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fleet.audit import AuditVerifyError
from fleet.coordinator import audit
from fleet.coordinator.database import Database, DatabaseError, Migration, bundled_migrations


async def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = await Database.open(path)
    try:
        versions = [m.version for m in bundled_migrations()]
        assert versions[0] == 1
        assert await db.schema_version() == versions[-1]
        assert await db.migrate(bundled_migrations()) == []  # idempotent
        mode = await db.fetchone("PRAGMA journal_mode")
        sync = await db.fetchone("PRAGMA synchronous")
        assert mode is not None
        assert mode[0] == "wal"
        assert sync is not None
        assert sync[0] == 2
    finally:
        await db.close()
    db = await Database.open(path)  # reopening applies nothing new
    try:
        rows = await db.fetchall("SELECT version, name FROM schema_version")
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in bundled_migrations()
        ]
    finally:
        await db.close()


async def test_failed_migration_leaves_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    good = bundled_migrations()
    broken = Migration(len(good) + 1, "9999_broken.sql", "CREATE TABLE half (x);\nSYNTAX ERROR;")
    with pytest.raises(DatabaseError, match="9999_broken"):
        await Database.open(path, [*good, broken])
    db = await Database.open(path)
    try:
        assert await db.schema_version() == len(good)
        assert await db.fetchone("SELECT name FROM sqlite_master WHERE name = 'half'") is None
    finally:
        await db.close()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    good = bundled_migrations()
    future = Migration(len(good) + 1, "0099_future.sql", "CREATE TABLE future (x);")
    db = await Database.open(path, [*good, future])
    await db.close()
    with pytest.raises(DatabaseError, match="newer"):
        await Database.open(path)


async def test_audit_is_append_only_and_chained(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "state.db")
    try:
        for i in range(3):
            async with db.transaction() as tx:
                await audit.append(
                    tx,
                    time=float(i),
                    actor="admin",
                    action="push",
                    outcome=audit.Outcome.ACCEPTED,
                    detail={"i": i},
                    request=b"req%d" % i,
                )
        rows = [audit.entry_of_row(r) for r in await db.fetchall("SELECT * FROM audit")]
        assert audit.verify_chain(rows) == 3
        assert rows[0].prev_hash == audit.GENESIS
        assert rows[1].prev_hash == rows[0].hash
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            async with db.transaction() as tx:
                await tx.execute("UPDATE audit SET detail = '{}' WHERE id = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            async with db.transaction() as tx:
                await tx.execute("DELETE FROM audit WHERE id = 3")
        # An edit made behind SQLite's back (triggers dropped) is detected by the chain.
        from dataclasses import replace

        tampered = [rows[0], replace(rows[1], detail='{"i":7}'), rows[2]]
        with pytest.raises(AuditVerifyError, match="entry 2: content does not match"):
            audit.verify_chain(tampered)
        with pytest.raises(AuditVerifyError, match="found entry 3 where entry 2 belongs"):
            audit.verify_chain([rows[0], rows[2]])
    finally:
        await db.close()
