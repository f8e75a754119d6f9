-- mailjobs schema, version 3: scheduled sends, in-doubt sends, manual retries.

-- When a scheduled job may start (status 'scheduled' until then).
ALTER TABLE jobs ADD COLUMN send_at DATETIME(6) NULL AFTER request_hash;

-- 1 while the last send attempt may have reached Gmail without us knowing (a lease that expired
-- while 'sending', a 5xx, a timeout). Such a recipient is resolved by IN_DOUBT_POLICY before it
-- is sent again.
ALTER TABLE job_recipients ADD COLUMN in_doubt TINYINT(1) NOT NULL DEFAULT 0 AFTER attempts;
-- attempts at the last manual retry: MAX_ATTEMPTS counts from here, attempts keeps the history.
ALTER TABLE job_recipients ADD COLUMN attempts_base SMALLINT UNSIGNED NOT NULL DEFAULT 0 AFTER in_doubt;
