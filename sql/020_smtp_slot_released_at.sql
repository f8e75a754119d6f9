-- mailjobs schema, version 20: when an SMTP slot's connection was last closed with QUIT.
-- A server counts a connection until it has processed its close, which can be a moment after the
-- client let go of the slot: a connection refused in that moment was refused with the closing one
-- still counted (smtp.py counts slots released within the last second as open then).
ALTER TABLE smtp_slots ADD COLUMN released_at DATETIME(6) NULL;
