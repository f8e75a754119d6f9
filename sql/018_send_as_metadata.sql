-- mailjobs schema, version 18: verified send-as addresses (issue 18) and recipients' metadata
-- (issue 15).

-- The addresses a sender's Gmail account may send as (users.settings.sendAs.list, read at
-- `mailjobs auth` and then every SEND_AS_CHECK_INTERVAL by a runner): its primary address and
-- its aliases, with Gmail's verificationStatus ('accepted', 'pending'; NULL for the primary).
-- `account` is the sender whose credentials (an OAuth grant or a delegated key) read the list;
-- a job whose sender_email is a verified alias of an account is sent with that account's
-- credentials. Rows are replaced as a whole at each read.
CREATE TABLE send_as_addresses (
  account              VARCHAR(320) NOT NULL,
  address              VARCHAR(320) NOT NULL,
  is_primary           TINYINT(1) NOT NULL DEFAULT 0,
  verification_status  VARCHAR(32) NULL,
  PRIMARY KEY (account, address),
  KEY ix_send_as_address (address)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- When the sender's send-as list was last read (NULL: never, so nothing is known and a POST
-- is not checked against it), when the next read is due, and why the last read failed.
ALTER TABLE senders ADD COLUMN send_as_read_at DATETIME(6) NULL,
                    ADD COLUMN send_as_due_at DATETIME(6) NULL,
                    ADD COLUMN send_as_error VARCHAR(1000) NULL;

-- A free JSON object the client attaches to one recipient at POST (its own ids), returned in
-- the recipient listings, the CSV export and every webhook event of the recipient.
ALTER TABLE job_recipients ADD COLUMN metadata JSON NULL;
