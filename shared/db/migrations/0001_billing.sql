-- Tables owned by billing. Polar ids are text; money is integer cents; time is timestamptz.
-- Every Polar-derived row keeps `version`: the modified_at / created_at / envelope timestamp it was built from,
-- so an UPDATE ... WHERE version < $incoming rejects an older snapshot (late retries, out-of-order delivery).
-- `event_ts` (the envelope timestamp) breaks ties: two events with the same modified_at apply in emit order.

CREATE TABLE webhook_log (
    webhook_id    text PRIMARY KEY,                       -- Polar's `webhook-id`: the same across retries
    type          text NOT NULL,
    status        text NOT NULL DEFAULT 'received'
                  CHECK (status IN ('received', 'applied', 'skipped', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    error         text,
    event_ts      timestamptz,                            -- the envelope `timestamp`
    payload       jsonb,                                  -- redacted; kept for replay, dropped after retention
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
CREATE INDEX webhook_log_received_at_idx ON webhook_log (received_at);
CREATE INDEX webhook_log_failed_idx ON webhook_log (received_at) WHERE status = 'failed';

CREATE TABLE customers (
    id            text PRIMARY KEY,                       -- Polar customer id
    user_id       text,                                   -- our user id = Polar external_id
    deleted_at    timestamptz,
    version       timestamptz NOT NULL,
    event_ts       timestamptz NOT NULL DEFAULT '-infinity',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Not unique: Polar keeps one live customer per external id, and a deleted customer's id can be reused. Enforcing
-- that here would refuse a recreated customer whose webhook arrives before the old one's customer.deleted.
CREATE INDEX customers_user_id_idx ON customers (user_id);

CREATE TABLE subscriptions (
    id                    text PRIMARY KEY,               -- Polar subscription id
    customer_id           text NOT NULL,
    user_id               text,
    product_id            text NOT NULL,
    plan                  text,                           -- from the plan catalog; NULL when the product is unknown
    unknown_product       boolean NOT NULL DEFAULT false, -- flagged, never guessed
    status                text NOT NULL,                  -- Polar's status, kept as text (unknown values survive)
    amount_cents          bigint,
    currency              text,
    recurring_interval    text,
    current_period_start  timestamptz,
    current_period_end    timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    canceled_at           timestamptz,
    started_at            timestamptz,
    ends_at               timestamptz,
    ended_at              timestamptz,
    checkout_id           text,
    version               timestamptz NOT NULL,
    event_ts               timestamptz NOT NULL DEFAULT '-infinity',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_id_idx ON subscriptions (user_id, status);
CREATE INDEX subscriptions_customer_id_idx ON subscriptions (customer_id);

CREATE TABLE checkouts (
    id            text PRIMARY KEY,                       -- Polar checkout id
    user_id       text,
    product_id    text,
    status        text NOT NULL,
    subscription_id text,
    version       timestamptz NOT NULL,
    event_ts       timestamptz NOT NULL DEFAULT '-infinity',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkouts_user_id_idx ON checkouts (user_id);

CREATE TABLE orders (
    id                     text PRIMARY KEY,              -- Polar order id
    customer_id            text NOT NULL,
    user_id                text,
    subscription_id        text,
    product_id             text,
    status                 text NOT NULL,
    billing_reason         text,
    paid                   boolean NOT NULL DEFAULT false,
    total_amount_cents     bigint NOT NULL DEFAULT 0,
    refunded_amount_cents  bigint NOT NULL DEFAULT 0,
    currency               text,
    version                timestamptz NOT NULL,
    event_ts                timestamptz NOT NULL DEFAULT '-infinity',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_id_idx ON orders (user_id);
CREATE INDEX orders_subscription_id_idx ON orders (subscription_id);

CREATE TABLE meter_credits (
    grant_id         text PRIMARY KEY,                    -- Polar benefit grant id
    customer_id      text NOT NULL,
    user_id          text,
    subscription_id  text,
    benefit_id       text NOT NULL,
    meter_id         text,
    units            bigint NOT NULL DEFAULT 0,           -- credited per period
    rollover         boolean NOT NULL DEFAULT false,
    granted_at       timestamptz,
    revoked_at       timestamptz,
    version          timestamptz NOT NULL,
    event_ts          timestamptz NOT NULL DEFAULT '-infinity',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meter_credits_user_id_idx ON meter_credits (user_id) WHERE revoked_at IS NULL;
