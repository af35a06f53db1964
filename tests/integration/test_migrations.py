import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from shared.db.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate

EXPECTED_TABLES = {
    "webhook_log", "customers", "subscriptions", "checkouts", "orders", "meter_credits",
    "usage_events", "usage_event_ids", "usage_counters", "usage_threads", "usage_reservations", "dead_letters",
    "schema_migrations",
}


async def test_migrations_apply_once_on_an_empty_database_and_then_do_nothing(empty_database_url: str) -> None:
    versions = [m.version for m in load_migrations()]
    assert await migrate(empty_database_url) == versions
    assert await migrate(empty_database_url) == []
    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert EXPECTED_TABLES <= tables
        assert [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")] == versions
    finally:
        await conn.close()


async def test_two_runners_at_once_apply_each_migration_exactly_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(4)))
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in load_migrations()]  # one runner did the work, the others found it done
    assert sum(1 for r in results if r) == 1


async def test_an_applied_migration_that_was_edited_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id int);")
    assert await migrate(empty_database_url, tmp_path) == [1]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id bigint);")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await migrate(empty_database_url, tmp_path)


async def test_a_failing_migration_leaves_nothing_half_applied(empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(empty_database_url, tmp_path)
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
    finally:
        await conn.close()


async def test_keys_the_later_paths_rely_on_exist(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO webhook_log (webhook_id, type) VALUES ('wh_1', 'x')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO webhook_log (webhook_id, type) VALUES ('wh_1', 'x')")
    row = ("e1", "u1", "t1", "m", 1, 2, 3, datetime.now(UTC).isoformat())  # the ledger has months around now
    sql = ("INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens, "
           "billable_tokens, occurred_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8::text::timestamptz)")
    await db.execute(sql, *row)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(sql, *row)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(sql, "e2", "u1", "t1", "m", -1, 2, 1, datetime.now(UTC).isoformat())
    counter = ("INSERT INTO usage_counters (user_id, limit_name, period_start, period_end, used) "
               "VALUES ('u1', 'tokens_per_month', '2026-01-01', '2026-02-01', 1)")
    await db.execute(counter)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(counter)
    await db.execute("INSERT INTO subscriptions (id, customer_id, product_id, status, version) "
                     "VALUES ('s1', 'c1', 'p', 'active', now())")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO subscriptions (id, customer_id, product_id, status, version) "
                         "VALUES ('s1', 'c1', 'p', 'active', now())")


async def test_the_ledger_with_its_rows_becomes_monthly_partitions(empty_database_url: str, tmp_path: Path) -> None:
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 11:
            shutil.copy(path, tmp_path)
    await migrate(empty_database_url, tmp_path)
    conn = await asyncpg.connect(empty_database_url)
    try:
        now = datetime.now(UTC)
        rows = [(f"e{i}", now - timedelta(days=days), status, cost)
                for i, (days, status, cost) in enumerate([(0, "pending", 12), (40, "synced", None),
                                                          (700, "quarantined", 5), (3, "pending", None)])]
        await conn.executemany(
            "INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens, "
            "billable_tokens, occurred_at, sync_status, cost_micro_usd) "
            "VALUES ($1, 'u', 't', 'm', 1, 2, 3, $2, $3, $4)", rows)
        assert (await migrate(empty_database_url))[:1] == [11]  # and any later ones

        assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'usage_events'") == "p"
        moved = await conn.fetch("SELECT event_id, occurred_at, sync_status, cost_micro_usd, tableoid::regclass::text "
                                 "AS part FROM usage_events ORDER BY event_id")
        assert [(r["event_id"], r["occurred_at"], r["sync_status"], r["cost_micro_usd"]) for r in moved] == rows
        assert {r["part"] for r in moved} == {f"usage_events_p{at:%Y%m}" for _, at, _, _ in rows}
        # The 700-day-old row's month exists (retention drops it later); this month and two ahead exist already.
        ahead = [f"usage_events_p{m.year:04d}{m.month:02d}" for m in (now.replace(day=1) + timedelta(days=31 * k)
                                                                      for k in range(3))]
        parts = {r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'usage_events'::regclass")}
        assert set(ahead) <= parts
        assert [(r["event_id"], r["occurred_at"]) for r in await conn.fetch(
            "SELECT * FROM usage_event_ids ORDER BY event_id")] == [(r[0], r[1]) for r in rows]
        # The outbox's partial index survives, on every month.
        pending_idx = await conn.fetchval("SELECT pg_get_indexdef('usage_events_pending_idx'::regclass)")
        assert pending_idx.endswith("WHERE (sync_status = 'pending'::text)")
        assert await conn.fetchval("SELECT to_regclass('usage_events_unpartitioned')") is None
    finally:
        await conn.close()
