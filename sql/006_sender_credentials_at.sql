-- mailjobs schema, version 6: when a sender's credentials were last stored, so a failure of a
-- send that started before a re-authorisation does not pause the sender again.
ALTER TABLE senders ADD COLUMN credentials_at DATETIME(6) NULL AFTER credentials;
