-- mailjobs schema, version 16: attachments and inline images (issue 16, part 1).

-- One uploaded file, owned by the API key that uploaded it. Content-addressed per key: the
-- same bytes uploaded twice by one key are one row (sha256 unique per key). While an upload is
-- under way `sha256` is NULL and `complete` 0 (such rows of a stopped upload are deleted by the
-- purge after a day). `public_id` is what clients see ("att_" and 24 random hex digits).
-- `last_used_at`: the upload, or the last job that referenced it (ATTACHMENT_RETENTION_DAYS).
CREATE TABLE attachments (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  public_id     VARCHAR(40) NOT NULL,
  api_key_id    BIGINT UNSIGNED NOT NULL,
  sha256        BINARY(32) NULL,
  size          BIGINT UNSIGNED NOT NULL DEFAULT 0,
  content_type  VARCHAR(255) NOT NULL,
  filename      VARCHAR(255) NULL,
  chunks        INT UNSIGNED NOT NULL DEFAULT 0,
  complete      TINYINT(1) NOT NULL DEFAULT 0,
  created_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  last_used_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_attachments_public (public_id),
  UNIQUE KEY uq_attachments_key_sha (api_key_id, sha256),
  KEY ix_attachments_used (last_used_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The bytes, in chunks well under max_allowed_packet (ATTACHMENT_CHUNK_BYTES, at most a
-- quarter of the packet), so every runner on every host reads them with ordinary statements.
CREATE TABLE attachment_chunks (
  attachment_id BIGINT UNSIGNED NOT NULL,
  seq           INT UNSIGNED NOT NULL,
  data          MEDIUMBLOB NOT NULL,
  PRIMARY KEY (attachment_id, seq)
) ENGINE=InnoDB;

-- Which jobs use which attachments (job level or any recipient's): DELETE refuses one that an
-- unfinished job uses, and the purge keeps them.
CREATE TABLE job_attachments (
  job_id        BIGINT UNSIGNED NOT NULL,
  attachment_id BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (job_id, attachment_id),
  KEY ix_job_attachments_attachment (attachment_id)
) ENGINE=InnoDB;

-- The job's own attachments (every recipient gets them) and a recipient's own, as JSON lists
-- of {"a": attachment row id, "p": its public id, "f": filename (a template when it uses
-- variables), "t": content type, "c": cid of an inline image or null, "s": size in bytes}.
ALTER TABLE jobs ADD COLUMN attachments JSON NULL;
ALTER TABLE job_recipients ADD COLUMN attachments JSON NULL;
