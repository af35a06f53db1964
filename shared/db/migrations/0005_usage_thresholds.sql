-- Usage that crossed 80 % / 100 % of a limit in a period: one row each, ever (the primary key makes concurrent
-- batches agree), published to billing.event.usage.threshold by usage-sync (published_at marks it sent).
CREATE TABLE usage_thresholds (
    user_id       text NOT NULL,
    limit_name    text NOT NULL,
    period_start  timestamptz NOT NULL,
    percent       integer NOT NULL,
    used          bigint NOT NULL,
    limit_value   bigint NOT NULL,
    resets_at     timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    PRIMARY KEY (user_id, limit_name, period_start, percent)
);
CREATE INDEX usage_thresholds_unpublished_idx ON usage_thresholds (created_at) WHERE published_at IS NULL;
