-- The ledger partitioned by month of `occurred_at` (UTC), so that retention drops whole partitions instead of
-- deleting billions of rows, and the outbox's partial index lives in small per-month pieces. usage-sync creates the
-- months ahead and drops those past USAGE_LEDGER_RETENTION_DAYS (usage_sync/retention.py); partitions are named
-- usage_events_pYYYYMM and cover [first of the month, first of the next) in UTC. There is no DEFAULT partition: it
-- would forbid DETACH ... CONCURRENTLY and make each new month scan it; usage-sync refuses an event outside the
-- months it keeps (too old, or too far ahead) at its edge instead.
--
-- A unique index on a partitioned table must hold the partition key, so the ledger's key is (event_id,
-- occurred_at); exact deduplication by event id alone lives in usage_event_ids (one narrow row per event), written
-- in the same statement as the ledger row and pruned only when the month holding that row is dropped.

ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
ALTER INDEX usage_events_pkey RENAME TO usage_events_unpartitioned_pkey;
ALTER INDEX usage_events_pending_idx RENAME TO usage_events_unpartitioned_pending_idx;
ALTER INDEX usage_events_user_idx RENAME TO usage_events_unpartitioned_user_idx;

CREATE TABLE usage_events (
    event_id             text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 128),  -- = Nats-Msg-Id = Polar external_id
    user_id              text NOT NULL,
    thread_id            text NOT NULL,
    model                text NOT NULL,
    input_tokens         bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens        bigint NOT NULL CHECK (output_tokens >= 0),
    cached_input_tokens  bigint NOT NULL DEFAULT 0 CHECK (cached_input_tokens >= 0),
    custom_key           boolean NOT NULL DEFAULT false,
    billable_tokens      bigint NOT NULL,                 -- 0 when the user's own key paid for the call
    reservation_id       text,
    occurred_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    -- outbox state: pending -> synced, or quarantined (Polar refused it: reason kept)
    sync_status          text NOT NULL DEFAULT 'pending'
                         CHECK (sync_status IN ('pending', 'synced', 'quarantined', 'skipped')),
    sync_attempts        integer NOT NULL DEFAULT 0,
    sync_error           text,
    synced_at            timestamptz,
    cost_micro_usd       bigint,                          -- NULL: the model has no price in the catalog
    price_version        text                             -- the catalog version it was priced with
) PARTITION BY RANGE (occurred_at);

-- Every event id recorded and not yet past retention: what makes "an event id is recorded once" exact across
-- months. Not partitioned: its key is the event id, which says nothing of time.
CREATE TABLE usage_event_ids (
    event_id     text PRIMARY KEY,
    occurred_at  timestamptz NOT NULL                   -- the ledger row's, so the row's partition can be found
);

-- The months the existing rows fall in, and the 14 before this one (USAGE_LEDGER_RETENTION_DAYS' default of 400 days
-- reaches into the 14th) through 2 ahead, so that ingest works before usage-sync's first maintenance run.
DO $$
DECLARE
    m timestamp;
BEGIN
    FOR m IN
        SELECT date_trunc('month', occurred_at AT TIME ZONE 'UTC') FROM usage_events_unpartitioned
        UNION
        SELECT generate_series(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '14 months',
                               date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months',
                               interval '1 month')
    LOOP
        -- (a row from before year 1 can only have been written by hand: its month gets a name usage-sync ignores)
        EXECUTE format('CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
                       'usage_events_p' || to_char(m, 'YYYYMM') || CASE WHEN m < '0001-01-01' THEN 'bc' ELSE '' END,
                       m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

INSERT INTO usage_events (event_id, user_id, thread_id, model, input_tokens, output_tokens, cached_input_tokens,
                          custom_key, billable_tokens, reservation_id, occurred_at, received_at, sync_status,
                          sync_attempts, sync_error, synced_at, cost_micro_usd, price_version)
SELECT event_id, user_id, thread_id, model, input_tokens, output_tokens, cached_input_tokens, custom_key,
       billable_tokens, reservation_id, occurred_at, received_at, sync_status, sync_attempts, sync_error, synced_at,
       cost_micro_usd, price_version
FROM usage_events_unpartitioned;

INSERT INTO usage_event_ids (event_id, occurred_at) SELECT event_id, occurred_at FROM usage_events_unpartitioned;

DROP TABLE usage_events_unpartitioned;

-- Indexes after the rows: built once rather than kept up row by row. The outbox's index holds pending rows only,
-- per month: synced months hold none, so it stays the size of what waits for Polar however large the ledger grows.
ALTER TABLE usage_events ADD PRIMARY KEY (event_id, occurred_at);
CREATE INDEX usage_events_pending_idx ON usage_events (received_at) WHERE sync_status = 'pending';
CREATE INDEX usage_events_user_idx ON usage_events (user_id, occurred_at);

-- Retention prunes the period tables by age: counters by when their period ended (with their threads and
-- threshold crossings, through the counters' keys), closed reservations by when they expired. Both indexes take a
-- row once, when it is created (a counter's updates leave period_end alone and stay HOT).
CREATE INDEX usage_counters_period_end_idx ON usage_counters (period_end);
CREATE INDEX usage_reservations_expires_idx ON usage_reservations (expires_at);
