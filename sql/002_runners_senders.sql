-- mailjobs schema, version 2: what the JobRunner needs.

-- One row per runner (embedded thread or worker process), written every HEARTBEAT_INTERVAL.
CREATE TABLE runners (
  id              VARCHAR(64) NOT NULL PRIMARY KEY,
  host            VARCHAR(255) NOT NULL,
  pid             INT UNSIGNED NOT NULL,
  -- embedded (thread in the API process) or worker (standalone process)
  kind            VARCHAR(16) NOT NULL,
  -- starting, idle, busy, stopping, stopped, db_backoff
  state           VARCHAR(16) NOT NULL,
  current_job_id  BIGINT UNSIGNED NULL,
  sent_count      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  failed_count    BIGINT UNSIGNED NOT NULL DEFAULT 0,
  started_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  heartbeat_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  stopped_at      DATETIME(6) NULL,
  KEY ix_runners_heartbeat (heartbeat_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per sending address: its credentials, limits and state, shared by every runner.
CREATE TABLE senders (
  email            VARCHAR(320) NOT NULL PRIMARY KEY,
  -- Overrides of SENDER_RATE_PER_MINUTE / SENDER_DAILY_CAP (NULL: use the defaults).
  rate_per_minute  INT UNSIGNED NULL,
  daily_cap        INT UNSIGNED NULL,
  -- Token bucket of the per-minute rate, refilled on each claim (shared by all runners).
  tokens           DOUBLE NOT NULL DEFAULT 0,
  tokens_at        DATETIME(6) NULL,
  -- ok, auth_revoked, config_error, unknown
  auth_state       VARCHAR(32) NOT NULL DEFAULT 'unknown',
  auth_error       TEXT NULL,
  -- Fernet-encrypted JSON of the OAuth authorized-user info (refresh token included).
  credentials      BLOB NULL,
  -- While in the future, nothing is claimed for this sender (daily limit reached at Gmail).
  paused_until     DATETIME(6) NULL,
  paused_reason    VARCHAR(1000) NULL,
  created_at       DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at       DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Sends per sender per hour, for the rolling 24-hour daily cap (reserved at claim time,
-- refunded for claims released unsent).
CREATE TABLE sender_hourly_sends (
  sender_email  VARCHAR(320) NOT NULL,
  hour_start    DATETIME NOT NULL,
  sends         INT NOT NULL DEFAULT 0,
  PRIMARY KEY (sender_email, hour_start)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Why a job is paused, by machine code: 'sender_auth' (resumed by re-authorising the sender),
-- 'operator', 'error_rate'.
ALTER TABLE jobs ADD COLUMN paused_by VARCHAR(32) NULL AFTER status_reason;
ALTER TABLE jobs ADD KEY ix_jobs_sender_status (sender_email, status);
