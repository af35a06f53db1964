-- Two coarser rollups beside usage_rollups, kept in the same statement, so that a year of analytics reads hundreds
-- of rows rather than one per (day, model, thread): by day and model (every query without threads), and by
-- calendar month, model and thread (thread queries: whole months from here, the days at either edge from
-- usage_rollups).
CREATE TABLE usage_rollups_by_model (
    user_id              text NOT NULL,
    day                  date NOT NULL,
    model                text NOT NULL,
    events               bigint NOT NULL DEFAULT 0,
    input_tokens         bigint NOT NULL DEFAULT 0,
    output_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens  bigint NOT NULL DEFAULT 0,
    billable_tokens      bigint NOT NULL DEFAULT 0,
    cost_micro_usd       bigint NOT NULL DEFAULT 0,
    priced_events        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, model)
);

CREATE TABLE usage_rollups_by_month (
    user_id              text NOT NULL,
    month                date NOT NULL,  -- the first day of the UTC calendar month
    model                text NOT NULL,
    thread_id            text NOT NULL,
    events               bigint NOT NULL DEFAULT 0,
    input_tokens         bigint NOT NULL DEFAULT 0,
    output_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens  bigint NOT NULL DEFAULT 0,
    billable_tokens      bigint NOT NULL DEFAULT 0,
    cost_micro_usd       bigint NOT NULL DEFAULT 0,
    priced_events        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, month, model, thread_id)
);

INSERT INTO usage_rollups_by_model
SELECT user_id, day, model, sum(events), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(billable_tokens), sum(cost_micro_usd), sum(priced_events)
FROM usage_rollups GROUP BY 1, 2, 3;

INSERT INTO usage_rollups_by_month
SELECT user_id, date_trunc('month', day)::date, model, thread_id, sum(events), sum(input_tokens), sum(output_tokens),
       sum(cached_input_tokens), sum(billable_tokens), sum(cost_micro_usd), sum(priced_events)
FROM usage_rollups GROUP BY 1, 2, 3, 4;
