import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db.migrate import MigrationError, load_migrations, migrate

EXPECTED_TABLES = {
    "webhook_log", "customers", "subscriptions", "checkouts", "orders", "meter_credits",
    "usage_events", "usage_counters", "usage_threads", "usage_reservations", "dead_letters", "schema_migrations",
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
    row = ("e1", "u1", "t1", "m", 1, 2, 3, "2026-01-01T00:00:00Z")
    sql = ("INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens, "
           "billable_tokens, occurred_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8::text::timestamptz)")
    await db.execute(sql, *row)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(sql, *row)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(sql, "e2", "u1", "t1", "m", -1, 2, 1, "2026-01-01T00:00:00Z")
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
