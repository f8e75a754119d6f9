-- mailjobs schema, version 15: organisations' senders (issue 18): test keys and service
-- accounts with domain-wide delegation.

-- A test key's jobs run the whole pipeline (validation, rendering, recording) but never reach a
-- real transport, whatever MAIL_TRANSPORT is. NULL: a real key; 'outbox': its messages become
-- .eml files under OUTBOX_DIR; 'null': they are discarded. Set when the key is created, never
-- changed (runners cache it).
ALTER TABLE api_keys ADD COLUMN test_mode VARCHAR(8) NULL;

-- Google service-account keys with domain-wide delegation (`mailjobs auth SENDER
-- --service-account key.json`): one row per address ('ops@example.org') or whole domain
-- ('*@example.org'); a sender uses its exact row, else its domain's, before any OAuth grant of
-- its own. `credentials` is the Fernet-encrypted JSON {"service_account": <key.json>, "scopes":
-- [...]}, like senders.credentials; `client_email` is the service account, for operators.
CREATE TABLE delegated_keys (
  pattern       VARCHAR(320) NOT NULL PRIMARY KEY,
  client_email  VARCHAR(320) NOT NULL,
  credentials   BLOB NOT NULL,
  stored_at     DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
