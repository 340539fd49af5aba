-- enrich schema, version 1.
-- Requires PostgreSQL 15+ (UNIQUE NULLS NOT DISTINCT). The five idx_* indexes on
-- user_phone_numbers and enrichment_items keep the replaced product's names and definitions.

CREATE TABLE user_phone_numbers (
    id                      bigserial PRIMARY KEY,
    user_id                 uuid        NOT NULL,
    phone_number            text        NOT NULL,            -- E.164
    verified                boolean     NOT NULL DEFAULT false,
    verification_code_hash  text,                            -- sha256 hex of salt+code, never the code
    verification_expires_at timestamptz,
    verification_attempts   integer     NOT NULL DEFAULT 0,
    verification_sent_at    timestamptz,
    verified_at             timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_phone_numbers_phone_key UNIQUE (phone_number),
    CONSTRAINT user_phone_numbers_user_key  UNIQUE (user_id)
);

CREATE INDEX idx_user_phone_numbers_phone_verified
    ON user_phone_numbers(phone_number, verified)
    WHERE verified = true;

-- The durable job record: a message is accepted once its row exists.
CREATE TABLE inbound_messages (
    id               bigserial PRIMARY KEY,
    message_sid      text        NOT NULL,
    account_sid      text,
    user_id          uuid,
    from_number      text        NOT NULL,                   -- E.164
    to_number        text,
    body             text        NOT NULL DEFAULT '',
    num_media        integer     NOT NULL DEFAULT 0,
    media            jsonb       NOT NULL DEFAULT '[]'::jsonb, -- [{"index","url","contentType"}]
    status           text        NOT NULL DEFAULT 'received',
    attempts         integer     NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    received_at      timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    CONSTRAINT inbound_messages_message_sid_key UNIQUE (message_sid),
    CONSTRAINT inbound_messages_status_check
        CHECK (status IN ('received', 'processing', 'done', 'failed', 'rejected'))
);

-- The job runner's claim query: open work ordered by when it is due.
CREATE INDEX idx_inbound_messages_open
    ON inbound_messages(next_attempt_at)
    WHERE status IN ('received', 'processing');

CREATE TABLE enrichment_items (
    id              bigserial PRIMARY KEY,
    user_id         uuid        NOT NULL,
    message_id      bigint      REFERENCES inbound_messages(id) ON DELETE SET NULL,
    message_sid     text        NOT NULL,
    item_index      integer     NOT NULL,
    item_type       text        NOT NULL,
    field_name      text,
    value           text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    source          text        NOT NULL,
    source_metadata jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Processing a message twice can never store its items twice.
    CONSTRAINT enrichment_items_message_item_key UNIQUE (message_sid, item_index),
    CONSTRAINT enrichment_items_status_check CHECK (status IN ('pending', 'approved', 'rejected')),
    CONSTRAINT enrichment_items_source_check CHECK (source IN ('sms', 'mms')),
    CONSTRAINT enrichment_items_type_check CHECK (item_type IN (
        'contact', 'organization', 'location', 'tag', 'email', 'phone', 'date', 'note', 'media'))
);

CREATE INDEX idx_enrichment_items_user_status
    ON enrichment_items(user_id, status);

CREATE INDEX idx_enrichment_items_created_at
    ON enrichment_items(created_at DESC);

CREATE INDEX idx_enrichment_items_user_source_status
    ON enrichment_items(user_id, source, status);

CREATE INDEX idx_enrichment_items_pending
    ON enrichment_items(user_id, created_at DESC)
    WHERE status = 'pending';

-- Outbound SMS outbox: written in the same transaction as the state it reports on,
-- sent by the outbox worker, retried until sent or out of attempts.
CREATE TABLE notifications (
    id               bigserial PRIMARY KEY,
    message_sid      text,                                  -- the inbound message it answers
    kind             text        NOT NULL,                  -- confirmation | failure | verification | ...
    to_number        text        NOT NULL,
    body             text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    provider_sid     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    CONSTRAINT notifications_status_check CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    -- At most one reply of each kind per inbound message.
    CONSTRAINT notifications_message_kind_key UNIQUE (message_sid, kind)
);

CREATE INDEX idx_notifications_open
    ON notifications(next_attempt_at)
    WHERE status IN ('pending', 'sending');
