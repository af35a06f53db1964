-- Tables owned by usage-sync: the ledger (also the outbox to Polar), the counters limits read, reservations.

CREATE TABLE usage_events (
    event_id             text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 128),  -- = Nats-Msg-Id = Polar external_id
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
    sync_status          text NOT NULL DEFAULT 'pending' CHECK (sync_status IN ('pending', 'synced', 'quarantined', 'skipped')),
    sync_attempts        integer NOT NULL DEFAULT 0,
    sync_error           text,
    synced_at            timestamptz
);
CREATE INDEX usage_events_pending_idx ON usage_events (received_at) WHERE sync_status = 'pending';
CREATE INDEX usage_events_user_idx ON usage_events (user_id, occurred_at);

CREATE TABLE usage_counters (
    user_id       text NOT NULL,
    limit_name    text NOT NULL,                          -- tokens_per_month | threads_per_month | messages_per_day
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    used          bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, limit_name, period_start)
);

-- Distinct threads seen per user and period: a thread counts once against threads_per_month.
CREATE TABLE usage_threads (
    user_id       text NOT NULL,
    period_start  timestamptz NOT NULL,
    thread_id     text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, period_start, thread_id)
);

CREATE TABLE usage_reservations (
    id                text PRIMARY KEY,
    user_id           text NOT NULL,
    thread_id         text,
    new_thread        boolean NOT NULL DEFAULT false,
    estimated_tokens  bigint NOT NULL CHECK (estimated_tokens >= 0),
    period_start      timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    settled_at        timestamptz,
    released_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_reservations_open_idx ON usage_reservations (user_id, expires_at)
    WHERE settled_at IS NULL AND released_at IS NULL;
