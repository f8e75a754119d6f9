-- Every SQL statement mailjobs runs, each under a "-- name: <name>" header, loaded by
-- dao_mysql.py and run with parameters (%s / %(name)s). Nothing a client sends is ever
-- formatted into this text.

-- name: ping
SELECT 1;

-- name: max_allowed_packet
SELECT @@max_allowed_packet;

-- name: insert_api_key
INSERT INTO api_keys (name, prefix, secret_hash, allowed_senders, is_operator, max_priority,
                      test_mode)
VALUES (%s, %s, %s, %s, %s, %s, %s);

-- name: api_key_by_prefix
SELECT id, name, prefix, secret_hash, allowed_senders, is_operator, created_at, last_used_at,
       revoked_at, max_priority, test_mode
FROM api_keys WHERE prefix = %s;

-- name: api_keys_all
SELECT id, name, prefix, secret_hash, allowed_senders, is_operator, created_at, last_used_at,
       revoked_at, max_priority, test_mode
FROM api_keys ORDER BY id;

-- name: touch_api_key
UPDATE api_keys SET last_used_at = UTC_TIMESTAMP(6) WHERE id = %s;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = UTC_TIMESTAMP(6)
WHERE (prefix = %s OR CAST(id AS CHAR) = %s) AND revoked_at IS NULL;

-- name: insert_job
INSERT INTO jobs (type, api_key_id, sender_email, from_name, reply_to, subject_template,
                  html_template, text_template, variables, status, total, duplicates_removed,
                  idempotency_key, request_hash, send_at, priority, expires_at)
VALUES ('template', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: insert_recipients
INSERT INTO job_recipients (job_id, to_email, name, variables) VALUES (%s, %s, %s, %s);

-- name: job_by_id
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at,
       send_at, paused_by, template_name, template_version, priority, expires_at,
       unsubscribe_base_url
FROM jobs WHERE id = %s;

-- name: job_by_idempotency_key
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at,
       send_at, paused_by, template_name, template_version, priority, expires_at,
       unsubscribe_base_url
FROM jobs WHERE api_key_id = %s AND idempotency_key = %s;

-- name: jobs_page
-- Newest first, keyset paged by id; %(api_key_id)s NULL lists every key's jobs (operators).
-- A list needs no template bodies nor variables (megabytes a job): NULL in their places, and the
-- subject's first 200 characters (the dashboard shows 60).
SELECT id, type, api_key_id, sender_email, from_name, reply_to, LEFT(subject_template, 200),
       NULL, NULL, NULL, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at,
       send_at, paused_by, template_name, template_version, priority, expires_at,
       unsubscribe_base_url
FROM jobs
WHERE (%(api_key_id)s IS NULL OR api_key_id = %(api_key_id)s)
  AND (%(status)s IS NULL OR status = %(status)s)
  AND id < %(before)s
ORDER BY id DESC LIMIT %(limit)s;

-- name: recipient_counts
SELECT status, COUNT(*) FROM job_recipients WHERE job_id = %s GROUP BY status;

-- name: recipients_page
SELECT id, job_id, to_email, name, variables, status, attempts, next_attempt_at, claimed_by,
       lease_expires_at, message_id, gmail_message_id, error_code, error, sent_at, created_at,
       updated_at, in_doubt, attempts_base
FROM job_recipients
WHERE job_id = %(job_id)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- name: recipients_page_by_status
SELECT id, job_id, to_email, name, variables, status, attempts, next_attempt_at, claimed_by,
       lease_expires_at, message_id, gmail_message_id, error_code, error, sent_at, created_at,
       updated_at, in_doubt, attempts_base
FROM job_recipients
WHERE job_id = %(job_id)s AND status = %(status)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- name: recipients_by_email
-- Every recipient row of one address (case-insensitive: the column's collation), newest first,
-- keyset paged by id; %(api_key_id)s NULL: every key's jobs (operators).
SELECT r.id, r.job_id, r.to_email, r.name, r.variables, r.status, r.attempts, r.next_attempt_at,
       r.claimed_by, r.lease_expires_at, r.message_id, r.gmail_message_id, r.error_code, r.error,
       r.sent_at, r.created_at, r.updated_at, r.in_doubt, r.attempts_base,
       j.status, j.sender_email, j.api_key_id
FROM job_recipients r JOIN jobs j ON j.id = r.job_id
WHERE r.to_email = %(email)s AND r.id < %(before)s
  AND (%(api_key_id)s IS NULL OR j.api_key_id = %(api_key_id)s)
ORDER BY r.id DESC LIMIT %(limit)s;

-- ===== runners ================================================================================

-- name: runner_heartbeat
INSERT INTO runners (id, host, pid, kind, state, current_job_id, sent_count, failed_count)
VALUES (%(id)s, %(host)s, %(pid)s, %(kind)s, %(state)s, %(job)s, %(sent)s, %(failed)s)
ON DUPLICATE KEY UPDATE state = %(state)s, current_job_id = %(job)s, sent_count = %(sent)s,
  failed_count = %(failed)s, heartbeat_at = UTC_TIMESTAMP(6),
  stopped_at = IF(%(state)s = 'stopped', UTC_TIMESTAMP(6), NULL);

-- name: live_runners
SELECT id, host, pid, kind, state, current_job_id, sent_count, failed_count, started_at,
       heartbeat_at
FROM runners
WHERE state <> 'stopped' AND heartbeat_at > UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND
ORDER BY id;

-- name: all_runners
SELECT id, host, pid, kind, state, current_job_id, sent_count, failed_count, started_at,
       heartbeat_at
FROM runners ORDER BY heartbeat_at DESC LIMIT %s;

-- ===== claiming work ==========================================================================

-- name: claimable_jobs
-- Jobs with work whose sender is not deferred and that have not expired: highest priority
-- first, then oldest (scheduling.py orders them fairly within a priority).
-- Numbered per key (rn), so the LIMIT keeps the oldest jobs of every key rather than
-- the oldest jobs overall: one key with hundreds of waiting jobs cannot crowd others out.
SELECT id, sender_email, priority, api_key_id FROM (
  SELECT j.id, j.sender_email, j.priority, j.api_key_id,
         ROW_NUMBER() OVER (PARTITION BY j.priority, j.api_key_id ORDER BY j.id) AS rn
  FROM jobs j
  LEFT JOIN senders s ON s.email = j.sender_email
  WHERE (j.status IN ('queued', 'running')
         OR (j.status = 'scheduled' AND j.send_at <= UTC_TIMESTAMP(6)))
    AND (j.expires_at IS NULL OR j.expires_at > UTC_TIMESTAMP(6))
    AND (s.paused_until IS NULL OR s.paused_until <= UTC_TIMESTAMP(6))
) ranked
ORDER BY priority DESC, rn, id LIMIT %s;

-- name: expired_jobs
SELECT id FROM jobs
WHERE status IN ('queued', 'scheduled', 'running', 'paused') AND expires_at <= UTC_TIMESTAMP(6)
LIMIT %s;

-- name: expire_recipients
UPDATE job_recipients
SET status = 'expired', error_code = 'expired', error = %s, claimed_by = NULL,
    lease_expires_at = NULL
WHERE job_id = %s AND status IN ('queued', 'retrying', 'in_doubt');

-- name: start_expired_job
-- An expired job that never started finishes like any other (finish_job needs 'running').
UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, UTC_TIMESTAMP(6))
WHERE id = %s AND status IN ('queued', 'scheduled', 'paused');

-- name: ensure_sender
-- A new sender's bucket starts full (its refill time long past: allowance() caps it at the
-- burst capacity), so its first mail goes at once, like any token bucket's.
INSERT IGNORE INTO senders (email, tokens, tokens_at)
VALUES (%s, 0, UTC_TIMESTAMP(6) - INTERVAL 1 DAY);

-- name: lock_sender
SELECT rate_per_minute, daily_cap, tokens,
       TIMESTAMPDIFF(MICROSECOND, tokens_at, UTC_TIMESTAMP(6)) / 1e6,
       paused_until > UTC_TIMESTAMP(6)
FROM senders WHERE email = %s FOR UPDATE;

-- name: sender_sends_24h
SELECT COALESCE(SUM(sends), 0) FROM sender_hourly_sends
WHERE sender_email = %s AND hour_start > UTC_TIMESTAMP() - INTERVAL 24 HOUR;

-- name: set_sender_tokens
UPDATE senders SET tokens = %s, tokens_at = UTC_TIMESTAMP(6) WHERE email = %s;

-- name: add_sender_sends
-- Reserve (or, negative, refund) sends in the current hour's bucket; never below zero (a refund
-- of a send reserved in an earlier hour, or with no daily cap, is dropped: conservative).
INSERT INTO sender_hourly_sends (sender_email, hour_start, sends)
VALUES (%s, DATE_FORMAT(UTC_TIMESTAMP(), '%%Y-%%m-%%d %%H:00:00'), GREATEST(0, %s))
ON DUPLICATE KEY UPDATE sends = GREATEST(0, sends + %s);

-- name: due_retrying
SELECT id FROM job_recipients
WHERE job_id = %s AND status = 'retrying' AND next_attempt_at <= UTC_TIMESTAMP(6)
ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED;

-- name: expired_sending
-- A lease that ran out: its runner died or hung. The send may have gone out (in doubt).
SELECT id FROM job_recipients
WHERE job_id = %s AND status = 'sending' AND next_attempt_at <= UTC_TIMESTAMP(6)
ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED;

-- name: due_queued
SELECT id FROM job_recipients
WHERE job_id = %s AND status = 'queued' AND next_attempt_at <= UTC_TIMESTAMP(6)
ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED;

-- name: mark_in_doubt
UPDATE job_recipients SET in_doubt = 1 WHERE id IN ({ids});

-- name: claim_recipients
-- {ids} is replaced by one %s placeholder per id, {case} by "WHEN %s THEN %s" per id (the id and
-- its new Message-ID, mail_message.recipient_message_id). The Message-ID is fixed here, before
-- any send, and never changed after.
UPDATE job_recipients
SET status = 'sending', claimed_by = %s, attempts = attempts + 1,
    lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    message_id = COALESCE(message_id, CASE id {case} END)
WHERE id IN ({ids});

-- name: claimed_rows
SELECT id, job_id, to_email, name, variables, status, attempts, next_attempt_at, claimed_by,
       lease_expires_at, message_id, gmail_message_id, error_code, error, sent_at, NULL, NULL,
       in_doubt, attempts_base, deferred_since
FROM job_recipients WHERE id IN ({ids}) ORDER BY id;

-- name: start_job
UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, UTC_TIMESTAMP(6))
WHERE id = %s AND status IN ('queued', 'scheduled');

-- name: renew_leases
UPDATE job_recipients
SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND
WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- ===== recording outcomes =====================================================================

-- name: record_sent
-- {case} is "WHEN %s THEN %s" once per row (id, Gmail id).
UPDATE job_recipients
SET status = 'sent', sent_at = UTC_TIMESTAMP(6), error_code = NULL, error = NULL,
    claimed_by = NULL, lease_expires_at = NULL, in_doubt = 0, deferred_since = NULL,
    gmail_message_id = CASE id {case} END
WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- name: record_failed
UPDATE job_recipients
SET status = %s, error_code = %s, error = %s, claimed_by = NULL, lease_expires_at = NULL,
    in_doubt = %s, attempts = GREATEST(0, attempts - %s)
WHERE id = %s AND claimed_by = %s AND status = 'sending';

-- name: record_retry
-- One statement for a batch of rows. {case} is "WHEN %s THEN %s" once per row, in six lists:
-- error_code, error, delay (microseconds), refund (1: the attempt does not count), in doubt,
-- deferral (2: refused before it left, since when: MAX_DEFER; 1: not tried, kept; 0: an
-- attempt, cleared). Assignments run left to right, each reading the old values of the others.
UPDATE job_recipients
SET error_code = CASE id {case} END, error = CASE id {case} END,
    next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL (CASE id {case} END) MICROSECOND,
    attempts = GREATEST(0, CAST(attempts AS SIGNED) - CASE id {case} END),
    in_doubt = GREATEST(in_doubt, CASE id {case} END),
    deferred_since = CASE (CASE id {case} END)
                       WHEN 2 THEN COALESCE(deferred_since, UTC_TIMESTAMP(6))
                       WHEN 1 THEN deferred_since END,
    status = 'retrying', claimed_by = NULL, lease_expires_at = NULL
WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- name: release_claims
-- Unsent claims go back, the attempt they were charged refunded.
UPDATE job_recipients
SET status = IF(attempts <= 1 AND error_code IS NULL, 'queued', 'retrying'),
    attempts = GREATEST(0, attempts - 1), claimed_by = NULL, lease_expires_at = NULL,
    next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- name: cancel_claims
-- Unsent claims of a cancelled job.
UPDATE job_recipients
SET status = 'cancelled', attempts = GREATEST(0, attempts - 1), claimed_by = NULL,
    lease_expires_at = NULL
WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- name: unfinished_count
SELECT COUNT(*) FROM job_recipients
WHERE job_id = %s AND status IN ('queued', 'sending', 'retrying');

-- name: finish_job
UPDATE jobs SET status = %s, finished_at = UTC_TIMESTAMP(6), status_reason = %s
WHERE id = %s AND status = 'running';

-- name: job_statuses
SELECT id, status FROM jobs WHERE id IN ({ids});

-- ===== job control ============================================================================

-- name: lock_job
SELECT status, started_at IS NOT NULL, send_at > UTC_TIMESTAMP(6), paused_by, sender_email
FROM jobs WHERE id = %s FOR UPDATE;

-- name: set_job_status
UPDATE jobs SET status = %s, paused_by = %s, status_reason = %s,
                finished_at = IF(%s, UTC_TIMESTAMP(6), NULL)
WHERE id = %s;

-- name: cancel_recipients
-- Unsent recipients of a cancelled job. A 'sending' one is in a runner's hands: it is recorded
-- as whatever happened at Gmail.
UPDATE job_recipients SET status = 'cancelled', next_attempt_at = UTC_TIMESTAMP(6)
WHERE job_id = %s AND status IN ('queued', 'retrying', 'in_doubt');

-- name: retry_recipients
-- {statuses} and {codes} are placeholder lists; {code_filter} is empty or "AND error_code IN".
UPDATE job_recipients
SET next_attempt_at = UTC_TIMESTAMP(6), attempts_base = attempts,
    -- an operator retrying a held in-doubt recipient has decided: send it
    in_doubt = IF(status = 'in_doubt', 0, in_doubt), status = 'queued'
WHERE job_id = %s AND status IN ({statuses}) {code_filter};

-- name: error_summary
SELECT error_code, COUNT(*), MIN(error) FROM job_recipients
WHERE job_id = %s AND error_code IS NOT NULL
  AND status IN ('failed', 'retrying', 'in_doubt', 'bounced', 'expired')
GROUP BY error_code ORDER BY COUNT(*) DESC;

-- ===== senders ================================================================================

-- name: defer_sender
UPDATE senders
SET paused_until = GREATEST(COALESCE(paused_until, UTC_TIMESTAMP(6)),
                            UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND),
    paused_reason = %s
WHERE email = %s;

-- name: sender_auth_failed
UPDATE senders SET auth_state = %s, auth_error = %s WHERE email = %s;

-- name: pause_sender_jobs
UPDATE jobs SET status = 'paused', paused_by = %s, status_reason = %s
WHERE sender_email = %s AND status IN ('queued', 'running');

-- name: resume_sender_jobs
UPDATE jobs SET status = IF(started_at IS NULL, 'queued', 'running'), paused_by = NULL,
                status_reason = NULL
WHERE sender_email = %s AND status = 'paused' AND paused_by = 'sender_auth';

-- name: save_sender_credentials
INSERT INTO senders (email, credentials, credentials_at, auth_state, auth_error, tokens, tokens_at)
VALUES (%s, %s, UTC_TIMESTAMP(6), 'ok', NULL, 0, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE credentials = VALUES(credentials), credentials_at = UTC_TIMESTAMP(6),
                        auth_state = 'ok', auth_error = NULL;

-- name: update_sender_credentials
-- A refreshed access token: same grant, so credentials_at stays.
UPDATE senders SET credentials = %s WHERE email = %s;

-- name: sender_credentials_at
SELECT credentials_at FROM senders WHERE email = %s FOR UPDATE;

-- name: sender_credentials
SELECT credentials FROM senders WHERE email = %s;

-- name: senders_all
-- has credentials: an OAuth grant of its own, or a delegated service-account key (its address's
-- or its domain's, issue 18).
SELECT email, rate_per_minute, daily_cap, auth_state, auth_error, paused_until, paused_reason,
       credentials IS NOT NULL OR EXISTS (
         SELECT 1 FROM delegated_keys d
         WHERE d.pattern IN (email, CONCAT('*@', SUBSTRING_INDEX(email, '@', -1))))
FROM senders ORDER BY email;

-- name: set_sender_limits
INSERT INTO senders (email, rate_per_minute, daily_cap, tokens, tokens_at)
VALUES (%s, %s, %s, 0, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE rate_per_minute = VALUES(rate_per_minute), daily_cap = VALUES(daily_cap);

-- ===== stored templates =======================================================================

-- name: template_latest_version
SELECT COALESCE(MAX(version), 0) FROM templates WHERE api_key_id = %s AND name = %s FOR UPDATE;

-- name: insert_template
INSERT INTO templates (api_key_id, name, version, subject, html, text) VALUES (%s, %s, %s, %s, %s, %s);

-- name: template_version
SELECT name, version, subject, html, text, created_at FROM templates
WHERE api_key_id = %s AND name = %s AND version = %s;

-- name: template_newest
SELECT name, version, subject, html, text, created_at FROM templates
WHERE api_key_id = %s AND name = %s ORDER BY version DESC LIMIT 1;

-- name: template_versions
SELECT name, version, subject, html, text, created_at FROM templates
WHERE api_key_id = %s AND name = %s ORDER BY version DESC;

-- name: templates_of_key
-- The newest version of each of a key's templates.
SELECT t.name, t.version, t.subject, t.html, t.text, t.created_at FROM templates t
JOIN (SELECT name, MAX(version) AS version FROM templates WHERE api_key_id = %s GROUP BY name) m
  ON m.name = t.name AND m.version = t.version
WHERE t.api_key_id = %s ORDER BY t.name;

-- name: set_job_template
UPDATE jobs SET template_name = %s, template_version = %s WHERE id = %s;

-- ===== metrics ================================================================================

-- name: queue_depth
SELECT r.status, COUNT(*) FROM jobs j
JOIN job_recipients r ON r.job_id = j.id
  AND r.status IN ('queued', 'retrying', 'sending', 'in_doubt')
WHERE j.status IN ('queued', 'scheduled', 'running', 'paused')
GROUP BY r.status;

-- name: oldest_queued_age
SELECT COALESCE(MAX(TIMESTAMPDIFF(MICROSECOND, r.next_attempt_at, UTC_TIMESTAMP(6))), 0) / 1e6
FROM jobs j JOIN job_recipients r ON r.job_id = j.id AND r.status = 'queued'
WHERE j.status IN ('queued', 'running') AND r.next_attempt_at <= UTC_TIMESTAMP(6);

-- name: runner_heartbeat_ages
SELECT id, kind, state, TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) / 1e6
FROM runners WHERE state <> 'stopped' AND heartbeat_at > UTC_TIMESTAMP(6) - INTERVAL 1 DAY;

-- ===== SMTP connection slots (SMTP_MAX_CONNECTIONS over all runners) ==========================

-- name: smtp_slot_count
SELECT COUNT(*) FROM smtp_slots WHERE slot BETWEEN 1 AND %s;

-- name: insert_smtp_slot
INSERT IGNORE INTO smtp_slots (slot) VALUES (%s);

-- name: free_smtp_slot
-- A free or expired slot among 1..SMTP_MAX_CONNECTIONS; rows others are taking are skipped.
SELECT slot FROM smtp_slots
WHERE slot BETWEEN 1 AND %s
  AND (holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= UTC_TIMESTAMP(6))
ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED;

-- name: smtp_slots_for_capped_take
-- Under a learned cap below SMTP_MAX_CONNECTIONS: every row locked, so the live ones are counted
-- exactly, those above the cap included (connections opened before it was lowered).
SELECT slot, holder IS NOT NULL AND lease_expires_at > UTC_TIMESTAMP(6) FROM smtp_slots
ORDER BY slot FOR UPDATE;

-- name: take_smtp_slot
UPDATE smtp_slots SET holder = %s, lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND,
                      connected_at = NULL
WHERE slot = %s;

-- name: renew_smtp_slot
-- 0 rows: the lease ran out and another holder took the slot.
UPDATE smtp_slots SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE slot = %s AND holder = %s;

-- name: release_smtp_slot
UPDATE smtp_slots SET holder = NULL, lease_expires_at = NULL, connected_at = NULL
WHERE slot = %s AND holder = %s;

-- name: mark_smtp_slot_connected
-- The client's time of it (UTC), compared with the client's time of a refused attempt.
UPDATE smtp_slots SET connected_at = %s WHERE slot = %s AND holder = %s;

-- name: smtp_slots_all
SELECT slot, holder, lease_expires_at FROM smtp_slots ORDER BY slot;

-- name: smtp_slots_connected_by_others
SELECT COUNT(*) FROM smtp_slots
WHERE holder IS NOT NULL AND holder <> %s AND lease_expires_at > UTC_TIMESTAMP(6)
  AND connected_at IS NOT NULL AND (%s IS NULL OR connected_at < %s);

-- ===== learned caps of the far side (learned_limits.py) =======================================

-- name: learned_caps_all
SELECT kind, target, cap, configured, reason, lowered_at, hold_until, successes, updated_at
FROM learned_limits ORDER BY kind, target;

-- name: learned_cap_insert
-- The row a first refusal lowers (at the configured value, lowered in the same transaction).
INSERT IGNORE INTO learned_limits (kind, target, cap, configured, reason, lowered_at, hold_until,
                                   updated_at)
VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6));

-- name: learned_cap_for_update
SELECT cap, successes, hold_until > UTC_TIMESTAMP(6) FROM learned_limits
WHERE kind = %s AND target = %s FOR UPDATE;

-- name: learned_cap_lower
UPDATE learned_limits
SET cap = %s, configured = %s, reason = %s, lowered_at = UTC_TIMESTAMP(6),
    hold_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, successes = 0,
    updated_at = UTC_TIMESTAMP(6)
WHERE kind = %s AND target = %s;

-- name: learned_cap_confirm
-- A refusal at (or above) the cap: no raise for another hold.
UPDATE learned_limits
SET hold_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, successes = 0,
    updated_at = UTC_TIMESTAMP(6)
WHERE kind = %s AND target = %s;

-- name: learned_cap_set
UPDATE learned_limits SET cap = %s, successes = %s, configured = %s, updated_at = UTC_TIMESTAMP(6)
WHERE kind = %s AND target = %s;

-- name: learned_cap_delete
DELETE FROM learned_limits WHERE kind = %s AND target = %s;

-- ===== dashboard ==============================================================================

-- name: api_key_by_id
SELECT id, name, prefix, secret_hash, allowed_senders, is_operator, created_at, last_used_at,
       revoked_at, max_priority, test_mode
FROM api_keys WHERE id = %s;

-- name: job_counts
-- Recipient counts by status of several jobs (the jobs list); {ids} is a placeholder list.
SELECT job_id, status, COUNT(*) FROM job_recipients WHERE job_id IN ({ids})
GROUP BY job_id, status;

-- name: send_rate
-- Sends of one job per minute (UTC), for the dashboard's chart. %% is a literal % here.
SELECT DATE_FORMAT(sent_at, '%%Y-%%m-%%d %%H:%%i') AS minute, COUNT(*)
FROM job_recipients
WHERE job_id = %s AND status = 'sent' AND sent_at IS NOT NULL
GROUP BY minute ORDER BY minute;

-- ===== deliverability: suppression list, one-click unsubscribe, bounces ========================
-- suppressions.email holds LOWER(address) in a binary collation: every statement lowers with
-- MySQL's LOWER() (never Python's), and compares job_recipients.to_email (unicode_ci) to it with
-- an explicit COLLATE utf8mb4_bin.

-- name: insert_suppression
-- 1 row: added; 0 rows: the address was on the list already (the first entry stays).
INSERT INTO suppressions (api_key_id, email, reason, job_id, recipient_id, detail)
VALUES (%s, LOWER(%s), %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE id = id;

-- name: suppression_by_email
SELECT id, api_key_id, email, reason, job_id, recipient_id, detail, created_at
FROM suppressions WHERE api_key_id = %s AND email = LOWER(%s);

-- name: suppressions_of_email
-- One address's entries; %(api_key_id)s NULL: every key's (operators).
SELECT id, api_key_id, email, reason, job_id, recipient_id, detail, created_at
FROM suppressions
WHERE email = LOWER(%(email)s) AND (%(api_key_id)s IS NULL OR api_key_id = %(api_key_id)s)
ORDER BY id;

-- name: suppressions_page
-- A key's list in id order, keyset paged; %(reason)s NULL lists every reason.
SELECT id, api_key_id, email, reason, job_id, recipient_id, detail, created_at
FROM suppressions
WHERE api_key_id = %(api_key_id)s AND id > %(after)s
  AND (%(reason)s IS NULL OR reason = %(reason)s)
ORDER BY id LIMIT %(limit)s;

-- name: delete_suppression
DELETE FROM suppressions WHERE api_key_id = %s AND email = LOWER(%s);

-- name: suppress_new_recipients
-- Recipients of a job just stored whose address its key has suppressed: never claimed.
UPDATE job_recipients r
JOIN suppressions s ON s.api_key_id = %s AND s.email = LOWER(r.to_email) COLLATE utf8mb4_bin
SET r.status = 'suppressed', r.error_code = 'suppressed',
    r.error = CONCAT('not sent: the address is on the suppression list (', s.reason, ')')
WHERE r.job_id = %s AND r.status = 'queued';

-- name: complete_suppressed_job
-- Every recipient of a new job is suppressed: nothing to send, the job is done at once.
UPDATE jobs SET status = 'completed', status_reason = %s,
                started_at = COALESCE(started_at, UTC_TIMESTAMP(6)), finished_at = UTC_TIMESTAMP(6)
WHERE id = %s AND status IN ('queued', 'scheduled');

-- name: suppressed_count
SELECT COUNT(*) FROM job_recipients WHERE job_id = %s AND status = 'suppressed';

-- name: set_job_unsubscribe
UPDATE jobs SET unsubscribe_base_url = %s WHERE id = %s;

-- name: suppressed_claims
-- Claimed recipients (a placeholder list) whose address was suppressed after the job was stored.
SELECT r.id, s.reason FROM job_recipients r
JOIN suppressions s ON s.api_key_id = %s AND s.email = LOWER(r.to_email) COLLATE utf8mb4_bin
WHERE r.id IN ({ids});

-- name: unsubscribe_target
SELECT r.id, r.job_id, r.to_email, j.api_key_id, r.message_id FROM job_recipients r
JOIN jobs j ON j.id = r.job_id WHERE r.id = %s;

-- name: bounce_senders
-- Senders whose mailbox a bounce check can read.
SELECT email FROM senders
WHERE credentials IS NOT NULL AND auth_state <> 'auth_revoked' ORDER BY email;

-- name: claim_bounce_check
-- 1 row: this runner checks the sender now, and the next check is due in %s seconds.
UPDATE senders SET bounce_check_due_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND
WHERE email = %s AND (bounce_check_due_at IS NULL OR bounce_check_due_at <= UTC_TIMESTAMP(6));

-- name: bounces_checked_at
SELECT bounces_checked_at FROM senders WHERE email = %s;

-- name: set_bounces_checked
UPDATE senders SET bounces_checked_at = GREATEST(COALESCE(bounces_checked_at, %s), %s)
WHERE email = %s;

-- name: known_bounce_messages
-- {ids} is a placeholder list of Gmail message ids.
SELECT gmail_id FROM bounce_messages WHERE sender_email = %s AND gmail_id IN ({ids});

-- name: insert_bounce_message
INSERT INTO bounce_messages (sender_email, gmail_id, outcome, recipient_id) VALUES (%s, %s, %s, %s);

-- name: bounce_recipient
-- The recipient a DSN is about, by the Message-ID mailjobs fixed before sending it.
SELECT r.id, r.job_id, r.to_email, j.api_key_id, r.message_id FROM job_recipients r
JOIN jobs j ON j.id = r.job_id
WHERE r.message_id = %s AND j.sender_email = %s
ORDER BY r.id LIMIT 1;

-- name: mark_complained
-- The recipient marked the message as spam: it stays 'sent' (it was delivered), annotated.
UPDATE job_recipients SET error_code = 'complaint', error = %s WHERE id = %s AND status = 'sent';

-- name: mark_bounced
-- A soft bounce never overwrites a hard one; a hard one may follow a soft one.
UPDATE job_recipients SET status = 'bounced', error_code = %s, error = %s
WHERE id = %s AND (status = 'sent' OR (status = 'bounced' AND error_code = 'bounce_4xx'));

-- ===== dashboard sessions =====================================================================

-- name: purge_dashboard_sessions
DELETE FROM dashboard_sessions WHERE expires_at <= UTC_TIMESTAMP(6);

-- name: insert_dashboard_session
INSERT INTO dashboard_sessions (token_hash, api_key_id, expires_at)
VALUES (%s, %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND);

-- name: dashboard_session_key
SELECT api_key_id FROM dashboard_sessions WHERE token_hash = %s AND expires_at > UTC_TIMESTAMP(6);

-- name: delete_dashboard_session
DELETE FROM dashboard_sessions WHERE token_hash = %s OR expires_at <= UTC_TIMESTAMP(6);

-- ===== data retention (retention.py, `mailjobs purge`) =========================================
-- Purging touches only rows of FINISHED jobs (completed, completed_with_errors, failed,
-- cancelled), bounce_messages and dead runners' rows; never a row a claim can want (claims take
-- queued/retrying/sending rows of unfinished jobs). Each batch is one short transaction that
-- first locks the job row (so a retry of that job waits for the batch, and the batch sees it if
-- it came first), reads the batch's ids without locking, then changes exactly those rows by
-- primary key: no range or gap is locked.

-- name: db_now
SELECT UTC_TIMESTAMP(6);

-- name: purge_count_delete
-- Finished jobs deleted whole, with their recipients (JOB_RETENTION_DAYS).
SELECT COUNT(DISTINCT j.id), COUNT(r.id) FROM jobs j
LEFT JOIN job_recipients r ON r.job_id = j.id
WHERE j.finished_at < %s
  AND j.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');

-- name: purge_count_erase
-- Recipients whose variables would be erased (RETENTION_DAYS), in jobs not deleted whole.
SELECT COUNT(DISTINCT j.id), COUNT(r.id) FROM jobs j
JOIN job_recipients r ON r.job_id = j.id AND r.variables IS NOT NULL
WHERE j.variables_erased = 0 AND j.finished_at < %(cutoff)s
  AND (%(delete_cutoff)s IS NULL OR j.finished_at >= %(delete_cutoff)s)
  AND j.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');

-- name: purge_count_bounce_messages
SELECT COUNT(*) FROM bounce_messages WHERE processed_at < %s;

-- name: purge_count_runners
SELECT COUNT(*) FROM runners WHERE heartbeat_at < %s;

-- name: purge_jobs_to_delete
SELECT id FROM jobs
WHERE finished_at < %s AND status IN ('completed', 'completed_with_errors', 'failed', 'cancelled')
ORDER BY finished_at, id LIMIT %s;

-- name: purge_jobs_to_erase
SELECT id FROM jobs
WHERE variables_erased = 0 AND finished_at < %s
  AND status IN ('completed', 'completed_with_errors', 'failed', 'cancelled')
ORDER BY finished_at, id LIMIT %s;

-- name: purge_lock_job
-- The job row, locked, while it is still finished before the cut-off; no row: leave it alone.
SELECT id FROM jobs
WHERE id = %s AND finished_at < %s
  AND status IN ('completed', 'completed_with_errors', 'failed', 'cancelled')
FOR UPDATE;

-- name: purge_job_statuses
SELECT DISTINCT status FROM job_recipients WHERE job_id = %s;

-- name: purge_recipient_ids
-- The next batch of one job's recipients, by (job_id, status, id) (ix_recipients_list).
SELECT id FROM job_recipients
WHERE job_id = %s AND status = %s AND id > %s ORDER BY id LIMIT %s;

-- name: purge_recipient_ids_with_variables
-- Any recipient of a job still holding variables (a row that changed status mid-way).
SELECT id FROM job_recipients WHERE job_id = %s AND variables IS NOT NULL LIMIT %s;

-- name: purge_any_recipient_ids
SELECT id FROM job_recipients WHERE job_id = %s LIMIT %s;

-- name: erase_variables
-- {ids} is a placeholder list of at most PK_CHUNK ids. FORCE INDEX and the short list keep this
-- a primary-key range: with a long list (MariaDB turns one of over 1,000 values into a subquery)
-- or ids covering much of a small table, the optimizer scans the table instead, and a scanning
-- UPDATE locks every row it reads, rows of unfinished jobs included.
UPDATE job_recipients FORCE INDEX (PRIMARY) SET variables = NULL
WHERE id IN ({ids}) AND variables IS NOT NULL;

-- name: set_variables_erasing
UPDATE jobs SET variables_erased_at = COALESCE(variables_erased_at, UTC_TIMESTAMP(6))
WHERE id = %s;

-- name: set_variables_erased
UPDATE jobs SET variables_erased = 1,
                variables_erased_at = COALESCE(variables_erased_at, UTC_TIMESTAMP(6))
WHERE id = %s;

-- name: delete_recipients
-- {ids} is a placeholder list of at most PK_CHUNK ids (see erase_variables; a single-table
-- DELETE takes no index hint, so the multi-table form).
DELETE r FROM job_recipients r FORCE INDEX (PRIMARY) WHERE r.id IN ({ids});

-- name: delete_job
DELETE FROM jobs WHERE id = %s;

-- name: delete_bounce_messages
DELETE FROM bounce_messages WHERE processed_at < %s ORDER BY processed_at LIMIT %s;

-- name: delete_dead_runners
DELETE FROM runners WHERE heartbeat_at < %s ORDER BY heartbeat_at LIMIT %s;

-- name: job_variables_erased_at
SELECT variables_erased_at FROM jobs WHERE id = %s;

-- name: ensure_lease
INSERT IGNORE INTO maintenance_leases (name, due_at) VALUES (%s, UTC_TIMESTAMP(6));

-- name: claim_lease
-- 1 row: this runner runs the task now; the next run is due in %s microseconds, and nobody else
-- starts it while this runner's lease lasts.
UPDATE maintenance_leases
SET due_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, holder = %s,
    lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND,
    started_at = UTC_TIMESTAMP(6), finished_at = NULL
WHERE name = %s AND due_at <= UTC_TIMESTAMP(6)
  AND (holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= UTC_TIMESTAMP(6));

-- name: renew_lease
UPDATE maintenance_leases SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE name = %s AND holder = %s;

-- name: finish_lease
UPDATE maintenance_leases
SET holder = NULL, lease_expires_at = NULL, finished_at = UTC_TIMESTAMP(6), last_result = %s
WHERE name = %s AND holder = %s;

-- name: lease_row
SELECT name, due_at, holder, lease_expires_at, started_at, finished_at, last_result
FROM maintenance_leases WHERE name = %s;

-- ===== export: a job's recipients as CSV (issue 18) ===========================================

-- name: export_recipients_page
-- One keyset page of a job's recipients for the CSV export: only the exported columns (never
-- the variables, megabytes a job), in id order from %(after)s.
SELECT id, to_email, name, status, attempts, error_code, error, sent_at, gmail_message_id
FROM job_recipients
WHERE job_id = %(job_id)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- ===== plans before sending: estimates (issue 18) =============================================

-- name: sender_limit_overrides
-- A sender's own limits (`mailjobs senders set`); NULL columns, or no row: the settings'.
SELECT rate_per_minute, daily_cap FROM senders WHERE email = %s;

-- name: sender_backlog
-- Unsent recipients of a sender's active jobs, but one job (%s: 0 excludes none); paused jobs
-- are not counted until they are resumed.
SELECT COUNT(*)
FROM jobs j JOIN job_recipients r ON r.job_id = j.id
WHERE j.sender_email = %s AND j.status IN ('queued', 'scheduled', 'running') AND j.id <> %s
  AND r.status IN ('queued', 'retrying', 'sending');

-- ===== service accounts with domain-wide delegation (issue 18) ================================

-- name: save_delegated_key
INSERT INTO delegated_keys (pattern, client_email, credentials, stored_at)
VALUES (%s, %s, %s, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE client_email = VALUES(client_email), credentials = VALUES(credentials),
                        stored_at = UTC_TIMESTAMP(6);

-- name: delegated_key
-- The key a sender uses: its own address's row first, else its domain's ('*@domain').
SELECT pattern, credentials FROM delegated_keys
WHERE pattern IN (%(email)s, CONCAT('*@', SUBSTRING_INDEX(%(email)s, '@', -1)))
ORDER BY pattern = %(email)s DESC LIMIT 1;

-- name: reauthorize_senders
-- A new key for an address or a domain: its senders are authorised again (credentials_at: a
-- failure of a send that began before this is stale, Dao.pause_sender); %(domain)s NULL for an
-- exact address.
UPDATE senders SET credentials_at = UTC_TIMESTAMP(6), auth_state = 'ok', auth_error = NULL
WHERE email = %(email)s OR SUBSTRING_INDEX(email, '@', -1) = %(domain)s;

-- name: resume_jobs_of_senders
UPDATE jobs SET status = IF(started_at IS NULL, 'queued', 'running'), paused_by = NULL,
                status_reason = NULL
WHERE (sender_email = %(email)s OR SUBSTRING_INDEX(sender_email, '@', -1) = %(domain)s)
  AND status = 'paused' AND paused_by = 'sender_auth';
