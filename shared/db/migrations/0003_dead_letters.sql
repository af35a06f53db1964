-- Shared by the consumers of every stream: what a handler could not take, with its reason, for replay.
CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    source        text NOT NULL,                          -- stream/consumer it came from
    subject       text NOT NULL,
    msg_id        text,
    stream_seq    bigint,
    headers       jsonb,
    payload       bytea,
    reason        text NOT NULL,
    deliveries    integer,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_created_idx ON dead_letters (created_at);
