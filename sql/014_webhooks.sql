-- mailjobs schema, version 14: signed event webhooks (webhooks.py, webhook_dispatch.py).

-- Where a key's events go. The signing secret (whsec_...) is stored Fernet-encrypted under
-- TOKEN_ENCRYPTION_KEY, like the senders' refresh tokens; after a rotation the previous one
-- keeps signing beside it until previous_secret_until.
CREATE TABLE webhook_endpoints (
  id                     BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  api_key_id             BIGINT UNSIGNED NOT NULL,
  url                    VARCHAR(2000) NOT NULL,
  description            VARCHAR(1000) NULL,
  -- JSON array of the event types it receives
  events                 JSON NOT NULL,
  -- events in one POST at most (1: the body is one event; more: a JSON array)
  batch_size             SMALLINT UNSIGNED NOT NULL DEFAULT 1,
  secret                 VARBINARY(1024) NOT NULL,
  previous_secret        VARBINARY(1024) NULL,
  previous_secret_until  DATETIME(6) NULL,
  enabled                TINYINT(1) NOT NULL DEFAULT 1,
  -- why it was disabled (410 Gone, failing since ...), for the client and operators
  disabled_reason        VARCHAR(1000) NULL,
  disabled_at            DATETIME(6) NULL,
  -- since when every attempt failed (NULL: the last one succeeded); past WEBHOOK_DISABLE_AFTER
  -- the endpoint is disabled
  failing_since          DATETIME(6) NULL,
  -- One delivery at a time per endpoint, oldest first (so a recipient's events arrive in
  -- order): a runner claims the endpoint under a lease; a failed attempt moves next_attempt_at
  -- by the retry schedule.
  next_attempt_at        DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  claimed_by             VARCHAR(64) NULL,
  lease_expires_at       DATETIME(6) NULL,
  created_at             DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY ix_webhook_endpoints_key (api_key_id, id),
  KEY ix_webhook_endpoints_due (enabled, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One POST of one endpoint, the same on every retry (its webhook-id): 1..batch_size events.
CREATE TABLE webhook_deliveries (
  id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  endpoint_id       BIGINT UNSIGNED NOT NULL,
  -- the webhook-id header
  msg_id            VARCHAR(64) NOT NULL,
  -- pending (not yet answered 2xx), delivered
  status            VARCHAR(16) NOT NULL DEFAULT 'pending',
  events            INT UNSIGNED NOT NULL,
  attempts          INT UNSIGNED NOT NULL DEFAULT 0,
  last_attempt_at   DATETIME(6) NULL,
  last_status_code  SMALLINT UNSIGNED NULL,
  last_error        VARCHAR(1000) NULL,
  next_attempt_at   DATETIME(6) NULL,
  delivered_at      DATETIME(6) NULL,
  created_at        DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY ix_webhook_deliveries_endpoint (endpoint_id, status, id),
  UNIQUE KEY uq_webhook_deliveries_msg (msg_id),
  -- retention: delivered POSTs older than RETENTION_DAYS go, with their events
  KEY ix_webhook_deliveries_delivered (status, delivered_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The outbox: one row per event and endpoint, written in the transaction of the state change
-- that causes it (so a crash between "sent" and "told" loses nothing). delivery_id is set when
-- a runner puts it into a delivery; the body is `payload` (the whole event, JSON) as stored.
CREATE TABLE webhook_events (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  endpoint_id   BIGINT UNSIGNED NOT NULL,
  type          VARCHAR(32) NOT NULL,
  job_id        BIGINT UNSIGNED NULL,
  recipient_id  BIGINT UNSIGNED NULL,
  payload       MEDIUMTEXT NOT NULL,
  delivery_id   BIGINT UNSIGNED NULL,
  created_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  -- "this endpoint's events not yet in a delivery, oldest first"
  KEY ix_webhook_events_unbatched (endpoint_id, delivery_id, id),
  KEY ix_webhook_events_delivery (delivery_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A free JSON object the client attaches to a job at POST and gets back in every event.
ALTER TABLE jobs ADD COLUMN metadata JSON NULL;
