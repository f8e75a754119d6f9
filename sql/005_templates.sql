-- mailjobs schema, version 5: stored templates with versions.

-- Every version of a stored template, owned by an API key; a version is never changed: an
-- edit (PUT) makes the next version, so a job that used version 3 keeps sending version 3.
CREATE TABLE templates (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  api_key_id  BIGINT UNSIGNED NOT NULL,
  name        VARCHAR(100) NOT NULL,
  version     INT UNSIGNED NOT NULL,
  subject     TEXT NOT NULL,
  html        MEDIUMTEXT NULL,
  text        MEDIUMTEXT NULL,
  created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_templates_version (api_key_id, name, version),
  CONSTRAINT fk_templates_api_key FOREIGN KEY (api_key_id) REFERENCES api_keys (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The stored template a job was created from (its text is copied into the job as well).
ALTER TABLE jobs ADD COLUMN template_name VARCHAR(100) NULL AFTER type;
ALTER TABLE jobs ADD COLUMN template_version INT UNSIGNED NULL AFTER template_name;
