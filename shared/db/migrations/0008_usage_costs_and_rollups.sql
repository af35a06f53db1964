-- What each AI response cost at list price, priced once when it was recorded (a later price change never rewrites
-- it), and the per-day rollups the usage analytics read instead of the ledger.
ALTER TABLE usage_events ADD COLUMN cost_micro_usd bigint;  -- NULL: the model has no price in the catalog
ALTER TABLE usage_events ADD COLUMN price_version text;     -- the catalog version it was priced with

-- One row per user, UTC day, model and thread, kept by usage-sync in the ledger's own transaction.
CREATE TABLE usage_rollups (
    user_id              text NOT NULL,
    day                  date NOT NULL,
    model                text NOT NULL,
    thread_id            text NOT NULL,
    events               bigint NOT NULL DEFAULT 0,
    input_tokens         bigint NOT NULL DEFAULT 0,
    output_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens  bigint NOT NULL DEFAULT 0,
    billable_tokens      bigint NOT NULL DEFAULT 0,
    cost_micro_usd       bigint NOT NULL DEFAULT 0,   -- of the priced events
    priced_events        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, model, thread_id)
);
