-- mailjobs schema, version 4: SMTP connection slots, shared by every runner on every host.

-- SMTP_MAX_CONNECTIONS rows (1..N, created on demand; rows above the setting are ignored). A
-- runner's sending thread holds one while its SMTP connection is open: it takes a free or expired
-- row (FOR UPDATE SKIP LOCKED) before connecting, renews the lease while the connection lives and
-- frees the row when the connection closes. A crashed process's rows expire with their lease.
CREATE TABLE smtp_slots (
  slot              INT UNSIGNED NOT NULL PRIMARY KEY,
  -- host:pid:token of the transport holding it; NULL when free
  holder            VARCHAR(128) NULL,
  lease_expires_at  DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
