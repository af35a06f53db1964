-- One Polar request budget for the whole deployment (shared/polar_budget.py): every process of billing and
-- usage-sync writes a row here before each request it sends, and counts the rows of the last window first (a sliding
-- window: whatever minute Polar's fixed window starts on, it never holds more than the budget).
CREATE TABLE polar_requests (
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    priority  text NOT NULL  -- interactive (checkout, portal) | ingest (usage) | reconcile
);
CREATE INDEX polar_requests_at ON polar_requests (at);

-- A 429 from Polar, honoured by every process: nobody sends before `until`.
CREATE TABLE polar_rate_limited (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    until  timestamptz NOT NULL,
    path   text
);

-- What reconciliation repaired: one row per object it changed, what differed, before and after.
CREATE TABLE reconcile_repairs (
    id           bigserial PRIMARY KEY,
    object       text NOT NULL,          -- subscription | customer
    object_id    text NOT NULL,
    user_id      text,
    fields       text[] NOT NULL,        -- what differed (status, product_id, current_period_end, ...)
    before       jsonb,                  -- NULL: we did not have it (an import)
    after        jsonb NOT NULL,
    source       text NOT NULL,          -- reconcile | backfill
    repaired_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_repairs_user ON reconcile_repairs (user_id, repaired_at);

-- Sweeps, the webhook endpoint's last known health, and meter drifts (reported, never "fixed" at Polar).
CREATE TABLE reconcile_sweeps (
    id             bigserial PRIMARY KEY,
    kind           text NOT NULL,        -- backfill | sweep
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    compared       integer NOT NULL DEFAULT 0,
    drifts         integer NOT NULL DEFAULT 0,
    repairs        integer NOT NULL DEFAULT 0,
    error          text
);

CREATE TABLE webhook_endpoint_health (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    endpoint_id       text,
    enabled           boolean,
    last_healthy_at   timestamptz,          -- the last check that found it enabled
    checked_at        timestamptz NOT NULL,
    note              text
);

CREATE TABLE redelivered_webhook_events (
    event_id        text PRIMARY KEY,       -- Polar's webhook event id
    attempts        integer NOT NULL DEFAULT 1,  -- redeliveries asked for (again only while it is not applied)
    redelivered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE meter_drifts (
    user_id         text NOT NULL,
    period_start    timestamptz NOT NULL,
    ledger_tokens   bigint NOT NULL,        -- synced billable tokens in our ledger
    polar_tokens    bigint NOT NULL,        -- Polar's meter for the customer and period
    pending_tokens  bigint NOT NULL,        -- still in the outbox when compared
    found_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, period_start)
);
