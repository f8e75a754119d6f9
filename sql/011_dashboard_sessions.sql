-- mailjobs schema, version 11: dashboard sessions that end at logout. The signed cookie carries a
-- random session token; its SHA-256 is stored here, and a session counts only while its row
-- exists and has not expired, so logging out (or the expiry) ends a session even for a copy of
-- the cookie kept elsewhere.
CREATE TABLE dashboard_sessions (
  token_hash  CHAR(64) NOT NULL PRIMARY KEY,
  api_key_id  BIGINT UNSIGNED NOT NULL,
  created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  expires_at  DATETIME(6) NOT NULL,
  KEY ix_dashboard_sessions_expiry (expires_at),
  CONSTRAINT fk_dashboard_sessions_key FOREIGN KEY (api_key_id) REFERENCES api_keys (id)
    ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
