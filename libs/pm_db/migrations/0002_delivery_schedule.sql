-- Deliveries are retried with backoff: when the next attempt is due.
ALTER TABLE deliveries ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
