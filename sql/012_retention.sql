-- mailjobs schema, version 14: data retention (retention.py, `mailjobs purge`).

-- Finished jobs whose recipients' variables were erased after RETENTION_DAYS. The time is set
-- in the transaction of the first batch that erases any (from then on the job cannot be
-- retried: its recipients would render without their values); the flag once none is left, so
-- later purge runs skip the job.
ALTER TABLE jobs ADD COLUMN variables_erased_at DATETIME(6) NULL;
ALTER TABLE jobs ADD COLUMN variables_erased TINYINT(1) NOT NULL DEFAULT 0;
-- "finished jobs whose variables are still there, finished before X" and "finished before X".
ALTER TABLE jobs ADD KEY ix_jobs_retention (variables_erased, finished_at);
ALTER TABLE jobs ADD KEY ix_jobs_finished (finished_at);

-- Bounce messages older than RETENTION_DAYS are deleted, oldest first, by this index.
ALTER TABLE bounce_messages ADD KEY ix_bounce_messages_processed (processed_at);

-- One row per periodic maintenance task ('purge'), shared by every runner on every host: the
-- runner whose UPDATE moves due_at forward runs the task (an UPDATE of one row, not GET_LOCK,
-- so it also holds on a Galera cluster). Created on first use.
CREATE TABLE maintenance_leases (
  name              VARCHAR(32) NOT NULL PRIMARY KEY,
  -- the next run may start then
  due_at            DATETIME(6) NOT NULL,
  -- the runner running it, under a lease it renews while it works (NULL: nobody is running it;
  -- a crashed holder's lease expires and the next due run goes ahead)
  holder            VARCHAR(64) NULL,
  lease_expires_at  DATETIME(6) NULL,
  started_at        DATETIME(6) NULL,
  finished_at       DATETIME(6) NULL,
  -- the counts of the last run, for operators
  last_result       VARCHAR(1000) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
