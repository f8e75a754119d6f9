-- mailjobs schema, version 9: deliverability. A suppression list per API key, one-click
-- unsubscribe (RFC 8058) and bounces read back from the senders' Gmail mailboxes.

-- Addresses an API key's jobs never send to again. `email` is stored LOWER()ed (by MySQL, in the
-- statements of queries.sql) with a binary collation, so the unique key is case-insensitive but,
-- unlike utf8mb4_unicode_ci, does not fold accents (muller@ and müller@ stay two addresses).
CREATE TABLE suppressions (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  api_key_id    BIGINT UNSIGNED NOT NULL,
  email         VARCHAR(320) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  -- unsubscribed, hard_bounce, complaint, manual
  reason        VARCHAR(16) NOT NULL,
  -- Where it came from (NULL when added by hand) and what was said (DSN status, diagnostic).
  job_id        BIGINT UNSIGNED NULL,
  recipient_id  BIGINT UNSIGNED NULL,
  detail        TEXT NULL,
  created_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_suppressions_email (api_key_id, email),
  -- A key's list, paged by id.
  KEY ix_suppressions_key (api_key_id, id),
  CONSTRAINT fk_suppressions_api_key FOREIGN KEY (api_key_id) REFERENCES api_keys (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A bounce names the Message-ID of the message that bounced: find its recipient by it.
ALTER TABLE job_recipients ADD KEY ix_recipients_message_id (message_id);

-- One-click unsubscribe: the base URL of the /u/<token> links, fixed when the job is stored
-- (NULL: the job's messages carry no List-Unsubscribe header).
ALTER TABLE jobs ADD COLUMN unsubscribe_base_url VARCHAR(500) NULL;

-- Bounce checks, per sender, shared by every runner: DSNs that arrived before
-- bounces_checked_at were processed; the next check is due at bounce_check_due_at (the runner
-- that moves it forward does the check).
ALTER TABLE senders ADD COLUMN bounces_checked_at DATETIME(6) NULL;
ALTER TABLE senders ADD COLUMN bounce_check_due_at DATETIME(6) NULL;

-- Every mailbox message a bounce check read, so none is processed twice (checks overlap a
-- little, because Gmail's search index lags behind delivery).
-- outcome: hard, soft, unmatched, not_a_bounce
CREATE TABLE bounce_messages (
  sender_email  VARCHAR(320) NOT NULL,
  gmail_id      VARCHAR(64) NOT NULL,
  outcome       VARCHAR(16) NOT NULL,
  recipient_id  BIGINT UNSIGNED NULL,
  processed_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (sender_email, gmail_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
