-- mailjobs schema, version 13: the far side's limits (learned_limits.py).

-- Caps learned from refusals, shared by every runner on every host: one row per SMTP server
-- (kind 'smtp', target host:port) or Gmail sender (kind 'gmail', target the address) that once
-- refused a connection or a concurrent request while others were open. The cap is lowered to
-- what was open then (multiplicative decrease), held for LEARNED_CAP_HOLD seconds, then raised
-- by one after every LEARNED_CAP_RAISE_AFTER successful sends (additive increase) up to the
-- configured value. A row at its configured value is a cap that recovered.
CREATE TABLE learned_limits (
  kind         VARCHAR(16) NOT NULL,
  target       VARCHAR(255) NOT NULL,
  cap          INT UNSIGNED NOT NULL,
  -- SMTP_MAX_CONNECTIONS or GMAIL_MAX_CONCURRENT_PER_SENDER when it was lowered
  configured   INT UNSIGNED NOT NULL,
  -- the refusal that lowered it, as the server said it
  reason       VARCHAR(1000) NOT NULL,
  lowered_at   DATETIME(6) NOT NULL,
  -- no raise before then
  hold_until   DATETIME(6) NOT NULL,
  -- successful sends since the last change
  successes    INT UNSIGNED NOT NULL DEFAULT 0,
  updated_at   DATETIME(6) NOT NULL,
  PRIMARY KEY (kind, target)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Since when a recipient has been refused before its message left (a refused connection, a
-- busy slot, a concurrent-request 429) without any attempt in between: past MAX_DEFER it fails
-- with the last refusal, so a server that refuses forever still ends in a readable error.
ALTER TABLE job_recipients ADD COLUMN deferred_since DATETIME(6) NULL;

-- When the connection of a held slot was established (greeted, EHLO answered; the client's
-- clock, UTC): a refusal of an attempt that began after others were established is the
-- server's connection limit; slots still connecting, or established only meanwhile, teach
-- nothing (every connection refused at once is an outage, not a limit).
ALTER TABLE smtp_slots ADD COLUMN connected_at DATETIME(6) NULL;
