-- mailjobs schema, version 1: API keys, jobs and their recipients.
-- All times are UTC (every connection sets time_zone = '+00:00'); utf8mb4 throughout.
-- Works on MariaDB >= 10.6 and MySQL >= 8.0 (both have SELECT ... FOR UPDATE SKIP LOCKED).

CREATE TABLE api_keys (
  id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name            VARCHAR(255) NOT NULL,
  -- The public part of the key ("mj_<prefix>_<secret>"), used to find the row.
  prefix          VARCHAR(16) NOT NULL,
  -- SHA-256 of the secret part, hex. The key itself is never stored.
  secret_hash     CHAR(64) NOT NULL,
  -- JSON array of patterns: "ops@example.com", "*@example.com" or "*".
  allowed_senders JSON NOT NULL,
  is_operator     TINYINT(1) NOT NULL DEFAULT 0,
  created_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  last_used_at    DATETIME(6) NULL,
  revoked_at      DATETIME(6) NULL,
  UNIQUE KEY uq_api_keys_prefix (prefix)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE jobs (
  id                 BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  type               VARCHAR(32) NOT NULL DEFAULT 'template',
  api_key_id         BIGINT UNSIGNED NOT NULL,
  sender_email       VARCHAR(320) NOT NULL,
  from_name          VARCHAR(255) NULL,
  reply_to           VARCHAR(320) NULL,
  subject_template   TEXT NOT NULL,
  html_template      MEDIUMTEXT NULL,
  text_template      MEDIUMTEXT NULL,
  variables          JSON NULL,
  -- queued, running, paused, completed, completed_with_errors, failed, cancelled
  status             VARCHAR(32) NOT NULL DEFAULT 'queued',
  -- Why the job is in its status (paused by whom, failed because ...), for operators.
  status_reason      VARCHAR(1000) NULL,
  total              INT UNSIGNED NOT NULL,
  duplicates_removed INT UNSIGNED NOT NULL DEFAULT 0,
  idempotency_key    VARCHAR(255) NULL,
  -- SHA-256 of the request body that created the job (idempotent replays must match it).
  request_hash       CHAR(64) NULL,
  created_at         DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  started_at         DATETIME(6) NULL,
  finished_at        DATETIME(6) NULL,
  updated_at         DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_jobs_idempotency (api_key_id, idempotency_key),
  KEY ix_jobs_key (api_key_id, id),
  KEY ix_jobs_status (status, id),
  CONSTRAINT fk_jobs_api_key FOREIGN KEY (api_key_id) REFERENCES api_keys (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE job_recipients (
  id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  job_id           BIGINT UNSIGNED NOT NULL,
  to_email         VARCHAR(320) NOT NULL,
  name             VARCHAR(255) NULL,
  variables        JSON NULL,
  -- queued, sending, retrying, sent, failed, cancelled
  status           VARCHAR(16) NOT NULL DEFAULT 'queued',
  attempts         SMALLINT UNSIGNED NOT NULL DEFAULT 0,
  -- When the row may next be claimed. While 'sending' it equals lease_expires_at, so one index
  -- serves the claim of queued, due retries and expired leases alike.
  next_attempt_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  claimed_by       VARCHAR(64) NULL,
  lease_expires_at DATETIME(6) NULL,
  -- RFC 5322 Message-ID, generated and stored before the first send attempt.
  message_id       VARCHAR(255) NULL,
  gmail_message_id VARCHAR(64) NULL,
  -- Short, stable, groupable cause (gmail_400, gmail_5xx, timeout, ...) and the human message.
  error_code       VARCHAR(64) NULL,
  error            TEXT NULL,
  sent_at          DATETIME(6) NULL,
  created_at       DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at       DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  -- The runner's claim: job X, status Y, due first.
  KEY ix_recipients_claim (job_id, status, next_attempt_at),
  -- "Recipients of job X with status Y", paged by id.
  KEY ix_recipients_list (job_id, status, id),
  CONSTRAINT fk_recipients_job FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
