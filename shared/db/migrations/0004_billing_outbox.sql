-- Events billing owes the chat service (billing.event.*), written in the same transaction as the change they
-- describe and published afterwards, so a crash between commit and publish loses none. Nats-Msg-Id = msg_id
-- makes a re-publish after a crash harmless.
CREATE TABLE billing_outbox (
    id            bigserial PRIMARY KEY,
    subject       text NOT NULL,
    msg_id        text NOT NULL UNIQUE,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX billing_outbox_pending_idx ON billing_outbox (id) WHERE published_at IS NULL;
