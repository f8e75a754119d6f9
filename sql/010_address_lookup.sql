-- mailjobs schema, version 10: looking one address up across jobs (GET /api/recipients?email=,
-- `mailjobs trace`): "did ann@example.com get our mail, and if not, why?" without scanning every
-- recipient row. to_email compares case-insensitively (utf8mb4_unicode_ci); suppressions.email
-- is stored lower-cased and looked up with LOWER().
ALTER TABLE job_recipients ADD KEY ix_recipients_email (to_email);
ALTER TABLE suppressions ADD KEY ix_suppressions_email (email);
