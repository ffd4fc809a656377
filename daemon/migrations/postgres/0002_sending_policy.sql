-- Sending policy: fallback deliveries, opt-outs, frequency caps.

-- The channel a delivery stands in for (set on fallback deliveries).
ALTER TABLE deliveries ADD COLUMN fallback_for TEXT;
-- The case's customer, so caps can count one customer's sends per channel.
ALTER TABLE deliveries ADD COLUMN customer_id TEXT;
UPDATE deliveries SET customer_id = cases.customer_id FROM cases WHERE cases.id = deliveries.case_id;
-- 1 for a step marked `critical: true`: exempt from frequency caps.
ALTER TABLE deliveries ADD COLUMN critical BIGINT NOT NULL DEFAULT 0;
-- Why a delivery waits (e.g. held by a frequency cap until a time).
ALTER TABLE deliveries ADD COLUMN note TEXT;
CREATE INDEX deliveries_by_customer ON deliveries (customer_id, channel, sent_ms);

-- Customers who asked not to be contacted on a channel. A delivery on an
-- opted-out channel is skipped (and its step's fallback used, if any).
CREATE TABLE optouts (
    customer_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    source      TEXT NOT NULL,   -- operator, sms-stop, unsubscribe-link …
    reason      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (customer_id, channel)
);

-- Inbound SMS (STOP) names a phone number: find its customers.
CREATE INDEX cases_by_phone ON cases (((trigger_event::jsonb) -> 'customer' ->> 'phone'));

-- What providers report later about sent messages (Twilio's status
-- callbacks), by the channel and the receipt its send returned. Kept apart
-- from deliveries: a report may arrive before the send is recorded, repeat,
-- or come out of order; `rank` only ever rises (a final state stays final).
CREATE TABLE provider_reports (
    channel    TEXT NOT NULL,
    receipt    TEXT NOT NULL,
    status     TEXT NOT NULL,   -- queued, sent, delivered, undelivered, failed …
    error_code TEXT,
    rank       BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, receipt)
);
