-- mailjobs schema, version 8: priorities and expiry.

-- 2 high, 1 normal, 0 low. Runners take claimable work of a higher priority first.
ALTER TABLE jobs ADD COLUMN priority TINYINT UNSIGNED NOT NULL DEFAULT 1 AFTER status_reason;
-- Recipients not sent by then end 'expired'; nothing is sent late.
ALTER TABLE jobs ADD COLUMN expires_at DATETIME(6) NULL AFTER send_at;
ALTER TABLE jobs ADD KEY ix_jobs_claimable (status, priority, id);
-- The highest priority a key may ask for (2: any).
ALTER TABLE api_keys ADD COLUMN max_priority TINYINT UNSIGNED NOT NULL DEFAULT 2 AFTER is_operator;
