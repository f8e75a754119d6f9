-- mailjobs schema, version 15: test keys (issue 18).

-- A test key's jobs run the whole pipeline (validation, rendering, recording) but never reach a
-- real transport, whatever MAIL_TRANSPORT is. NULL: a real key; 'outbox': its messages become
-- .eml files under OUTBOX_DIR; 'null': they are discarded. Set when the key is created, never
-- changed (runners cache it).
ALTER TABLE api_keys ADD COLUMN test_mode VARCHAR(8) NULL;
