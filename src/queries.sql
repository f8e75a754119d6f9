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
INSERT INTO job_recipients (job_id, to_email, name, variables, locale, locale_used, metadata,
                            attachments)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s);

-- name: set_job_totals
-- A job stored a chunk of recipients at a time learns its totals at the end (same transaction).
UPDATE jobs SET total = %s, duplicates_removed = %s WHERE id = %s;

-- name: job_by_id
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at,
       send_at, paused_by, template_name, template_version, priority, expires_at,
       unsubscribe_base_url, template_variants, metadata, attachments
FROM jobs WHERE id = %s;

-- name: job_by_idempotency_key
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at,
       send_at, paused_by, template_name, template_version, priority, expires_at,
       unsubscribe_base_url, template_variants, metadata
FROM jobs WHERE api_key_id = %s AND idempotency_key = %s;

-- name: jobs_page
-- Newest first, keyset paged by id; %(api_key_id)s NULL lists every key's jobs (operators).
-- A list needs no template bodies nor variables (megabytes a job): NULL in their places, and the
-- subject's first 200 characters (the dashboard shows 60).
SELECT id, type, api_key_id, sender_email, from_name, reply_to,
       LEFT(subject_template, 200) AS subject_template, NULL AS html_template,
       NULL AS text_template, NULL AS variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at,
       send_at, paused_by, template_name, template_version, priority, expires_at,
       unsubscribe_base_url
FROM jobs
WHERE (%(api_key_id)s IS NULL OR api_key_id = %(api_key_id)s)
  AND (%(status)s IS NULL OR status = %(status)s)
  AND id < %(before)s
ORDER BY id DESC LIMIT %(limit)s;

-- name: recipient_counts
SELECT status, COUNT(*) AS n FROM job_recipients WHERE job_id = %s GROUP BY status;

-- name: recipients_page
SELECT id, job_id, to_email, name, variables, status, attempts, next_attempt_at, claimed_by,
       lease_expires_at, message_id, gmail_message_id, error_code, error, sent_at, created_at,
       updated_at, in_doubt, attempts_base, deferred_since, locale, locale_used, metadata
FROM job_recipients
WHERE job_id = %(job_id)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- name: recipients_page_by_status
SELECT id, job_id, to_email, name, variables, status, attempts, next_attempt_at, claimed_by,
       lease_expires_at, message_id, gmail_message_id, error_code, error, sent_at, created_at,
       updated_at, in_doubt, attempts_base, deferred_since, locale, locale_used, metadata
FROM job_recipients
WHERE job_id = %(job_id)s AND status = %(status)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- name: recipients_by_email
-- Every recipient row of one address (case-insensitive: the column's collation), newest first,
-- keyset paged by id; %(api_key_id)s NULL: every key's jobs (operators).
SELECT r.id, r.job_id, r.to_email, r.name, r.variables, r.status, r.attempts, r.next_attempt_at,
       r.claimed_by, r.lease_expires_at, r.message_id, r.gmail_message_id, r.error_code, r.error,
       r.sent_at, r.created_at, r.updated_at, r.in_doubt, r.attempts_base, r.deferred_since,
       r.locale, r.locale_used, j.status AS job_status, j.sender_email, j.api_key_id,
       r.metadata, r.attachments, j.attachments AS job_attachments
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

-- name: expiring_recipients
-- The recipients expire_recipients is about to expire (locked: their events follow).
SELECT id FROM job_recipients
WHERE job_id = %s AND status IN ('queued', 'retrying', 'in_doubt') FOR UPDATE;

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
       TIMESTAMPDIFF(MICROSECOND, tokens_at, UTC_TIMESTAMP(6)) / 1e6 AS elapsed,
       paused_until > UTC_TIMESTAMP(6) AS deferred
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

-- name: due_claimable
-- One round trip for the three kinds a claim takes, in this order (kind): 0 due retries, 1
-- expired leases (their runner died or hung: the send may have gone out, in doubt), 2 queued;
-- each part limited to the claim's size (the caller takes the first ones by kind; the few rows
-- a part locked beyond them stay locked, unclaimed, until the claim commits). Never this
-- runner's own expired claims: it still holds them (refused by its lease guard, or renewed once
-- the database answers), and claiming one again would put it in its hand twice.
(SELECT id, 0 AS kind FROM job_recipients
 WHERE job_id = %(job)s AND status = 'retrying' AND next_attempt_at <= UTC_TIMESTAMP(6)
 ORDER BY next_attempt_at LIMIT %(n)s FOR UPDATE SKIP LOCKED)
UNION ALL
(SELECT id, 1 FROM job_recipients
 WHERE job_id = %(job)s AND status = 'sending' AND next_attempt_at <= UTC_TIMESTAMP(6)
   AND NOT claimed_by <=> %(runner)s
 ORDER BY next_attempt_at LIMIT %(n)s FOR UPDATE SKIP LOCKED)
UNION ALL
(SELECT id, 2 FROM job_recipients
 WHERE job_id = %(job)s AND status = 'queued' AND next_attempt_at <= UTC_TIMESTAMP(6)
 ORDER BY next_attempt_at LIMIT %(n)s FOR UPDATE SKIP LOCKED);

-- name: mark_in_doubt
-- Only while still expired (as claim_recipients re-checks).
UPDATE job_recipients SET in_doubt = 1
WHERE id IN ({ids}) AND status = 'sending' AND next_attempt_at <= UTC_TIMESTAMP(6);

-- name: claim_recipients
-- The first argument is a JSON array of [id, new Message-ID] pairs (the Message-ID from
-- mail_message.recipient_message_id). The Message-ID is fixed here, before any send, and never
-- changed after. A join on JSON_TABLE, not CASE id WHEN ...: a CASE is walked for every row
-- (5,000 claimed rows took 1 s of server time, 100 took 24 ms), the join is one lookup per row.
-- The WHERE re-checks that each row is still claimable as due_claimable found it: on a Galera
-- cluster SKIP LOCKED locks are local to a node, and a row another runner claimed since (its
-- next_attempt_at is then a lease away) or that was recorded is left alone; claimed_rows reads
-- back only what this statement took.
UPDATE JSON_TABLE(%s, '$[*]' COLUMNS (id BIGINT PATH '$[0]',
                                       new_message_id VARCHAR(255) PATH '$[1]')) AS claimed
STRAIGHT_JOIN job_recipients r ON r.id = claimed.id
SET r.status = 'sending', r.claimed_by = %s, r.attempts = r.attempts + 1,
    r.lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    r.next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    r.message_id = COALESCE(r.message_id, claimed.new_message_id)
WHERE r.status IN ('queued', 'retrying', 'sending') AND r.next_attempt_at <= UTC_TIMESTAMP(6);

-- name: claimed_rows
-- With, last, the reason when the job's API key suppressed the address after the job was
-- stored (the key's suppression of the address is unique: one row at most), else NULL.
SELECT r.id, r.job_id, r.to_email, r.name, r.variables, r.status, r.attempts,
       r.next_attempt_at, r.claimed_by, r.lease_expires_at, r.message_id, r.gmail_message_id,
       r.error_code, r.error, r.sent_at, r.in_doubt, r.attempts_base,
       r.deferred_since, r.locale, r.locale_used, r.attachments, s.reason AS suppressed_reason
FROM job_recipients r
LEFT JOIN suppressions s ON s.api_key_id = %s AND s.email = LOWER(r.to_email) COLLATE utf8mb4_bin
WHERE r.id IN ({ids}) AND r.claimed_by = %s AND r.status = 'sending' ORDER BY r.id;

-- name: start_job
UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, UTC_TIMESTAMP(6))
WHERE id = %s AND status IN ('queued', 'scheduled');

-- name: renew_leases
UPDATE job_recipients
SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND
WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- name: held_claims
-- Which of these claims are still this runner's (after a renewal that changed fewer rows than
-- it was given: the others were taken over while this runner could not renew them).
SELECT id FROM job_recipients WHERE claimed_by = %s AND status = 'sending' AND id IN ({ids});

-- ===== recording outcomes =====================================================================

-- name: record_sent
-- The first argument is a JSON array of [id, provider id or null] pairs (a join, not a CASE:
-- see claim_recipients).
UPDATE JSON_TABLE(%s, '$[*]' COLUMNS (id BIGINT PATH '$[0]',
                                       provider_id VARCHAR(64) PATH '$[1]')) AS sent
STRAIGHT_JOIN job_recipients r ON r.id = sent.id
SET r.status = 'sent', r.sent_at = UTC_TIMESTAMP(6), r.error_code = NULL, r.error = NULL,
    r.claimed_by = NULL, r.lease_expires_at = NULL, r.in_doubt = 0, r.deferred_since = NULL,
    r.gmail_message_id = sent.provider_id
WHERE r.claimed_by = %s AND r.status = 'sending';

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

-- name: claims_of
-- A runner's claims of one job (after a claim whose answer was lost: job_runner's sweep).
SELECT id FROM job_recipients WHERE job_id = %s AND claimed_by = %s AND status = 'sending';

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
SELECT status, started_at IS NOT NULL AS started, send_at > UTC_TIMESTAMP(6) AS future_send_at,
       paused_by, sender_email
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
SELECT error_code, COUNT(*) AS n, MIN(error) AS example FROM job_recipients
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
         AS has_credentials
FROM senders ORDER BY email;

-- name: set_sender_limits
INSERT INTO senders (email, rate_per_minute, daily_cap, tokens, tokens_at)
VALUES (%s, %s, %s, 0, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE rate_per_minute = VALUES(rate_per_minute), daily_cap = VALUES(daily_cap);

-- ===== stored templates =======================================================================

-- name: template_latest_version
SELECT COALESCE(MAX(version), 0) FROM templates WHERE api_key_id = %s AND name = %s FOR UPDATE;

-- name: insert_template
INSERT INTO templates (api_key_id, name, version, subject, html, text, variants)
VALUES (%s, %s, %s, %s, %s, %s, %s);

-- name: template_version
SELECT name, version, subject, html, text, created_at, variants FROM templates
WHERE api_key_id = %s AND name = %s AND version = %s;

-- name: template_newest
SELECT name, version, subject, html, text, created_at, variants FROM templates
WHERE api_key_id = %s AND name = %s ORDER BY version DESC LIMIT 1;

-- name: template_versions
SELECT name, version, subject, html, text, created_at, variants FROM templates
WHERE api_key_id = %s AND name = %s ORDER BY version DESC;

-- name: templates_of_key
-- The newest version of each of a key's templates.
SELECT t.name, t.version, t.subject, t.html, t.text, t.created_at, t.variants FROM templates t
JOIN (SELECT name, MAX(version) AS version FROM templates WHERE api_key_id = %s GROUP BY name) m
  ON m.name = t.name AND m.version = t.version
WHERE t.api_key_id = %s ORDER BY t.name;

-- name: set_job_template
UPDATE jobs SET template_name = %s, template_version = %s WHERE id = %s;

-- name: set_job_variants
-- The template's versions by language (issue 16), as JSON.
UPDATE jobs SET template_variants = %s WHERE id = %s;

-- ===== metrics ================================================================================

-- name: queue_depth
SELECT r.status, COUNT(*) AS n FROM jobs j
JOIN job_recipients r ON r.job_id = j.id
  AND r.status IN ('queued', 'retrying', 'sending', 'in_doubt')
WHERE j.status IN ('queued', 'scheduled', 'running', 'paused')
GROUP BY r.status;

-- name: oldest_queued_age
SELECT COALESCE(MAX(TIMESTAMPDIFF(MICROSECOND, r.next_attempt_at, UTC_TIMESTAMP(6))), 0) / 1e6
FROM jobs j JOIN job_recipients r ON r.job_id = j.id AND r.status = 'queued'
WHERE j.status IN ('queued', 'running') AND r.next_attempt_at <= UTC_TIMESTAMP(6);

-- name: runner_heartbeat_ages
SELECT id, kind, state, TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) / 1e6 AS age
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
SELECT slot, holder IS NOT NULL AND lease_expires_at > UTC_TIMESTAMP(6) AS held FROM smtp_slots
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
-- The first argument: 1 when its connection was closed with QUIT (released_at is then set, from
-- connected_at's old value: assignments run left to right).
UPDATE smtp_slots SET released_at = IF(%s = 1 AND connected_at IS NOT NULL, UTC_TIMESTAMP(6),
                                       released_at),
                      holder = NULL, lease_expires_at = NULL, connected_at = NULL
WHERE slot = %s AND holder = %s;

-- name: mark_smtp_slot_connected
-- The client's time of it (UTC), compared with the client's time of a refused attempt.
UPDATE smtp_slots SET connected_at = %s WHERE slot = %s AND holder = %s;

-- name: smtp_slots_all
SELECT slot, holder, lease_expires_at FROM smtp_slots ORDER BY slot;

-- name: smtp_slots_connected_by_others
-- Also a slot whose connection was closed with QUIT within the last second (any holder's, this
-- one's too): the server may not have processed that close yet, so it may still count it.
SELECT COUNT(*) FROM smtp_slots
WHERE (holder IS NOT NULL AND holder <> %s AND lease_expires_at > UTC_TIMESTAMP(6)
       AND connected_at IS NOT NULL AND (%s IS NULL OR connected_at < %s))
   OR released_at > UTC_TIMESTAMP(6) - INTERVAL 1 SECOND;

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
SELECT cap, successes, hold_until > UTC_TIMESTAMP(6) AS held FROM learned_limits
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
SELECT job_id, status, COUNT(*) AS n FROM job_recipients WHERE job_id IN ({ids})
GROUP BY job_id, status;

-- name: send_rate
-- Sends of one job per minute (UTC), for the dashboard's chart. %% is a literal % here.
SELECT DATE_FORMAT(sent_at, '%%Y-%%m-%%d %%H:%%i') AS minute, COUNT(*) AS n
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
SELECT r.id AS recipient_id, r.job_id, r.to_email, j.api_key_id, r.message_id
FROM job_recipients r
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
SELECT COUNT(DISTINCT j.id) AS jobs, COUNT(r.id) AS recipients FROM jobs j
LEFT JOIN job_recipients r ON r.job_id = j.id
WHERE j.finished_at < %s
  AND j.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');

-- name: purge_count_erase
-- Recipients whose variables would be erased (RETENTION_DAYS), in jobs not deleted whole.
SELECT COUNT(DISTINCT j.id) AS jobs, COUNT(r.id) AS recipients FROM jobs j
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

-- ===== webhooks (webhooks.py, webhook_dispatch.py) ==========================================
-- Events are written by INSERT ... SELECT in the transaction of the state change that causes
-- them, one row per enabled endpoint of the job's key that subscribes to the type; the event
-- (type, RFC 3339 timestamp, data) is built here as JSON from the rows just changed.

-- name: webhook_recipient_events
-- Args: type, type, the recipients' source argument, their statuses, then the type again.
-- {recipients} is one of the two sources below (recipients_by_ids: a JSON array of ids, joined as
-- in record_sent, so a batch of any size is one statement; recipients_of_job: a job id); only
-- those in one of {statuses} (webhooks.RECIPIENT_EVENT_STATUSES) get the event, one row per
-- enabled endpoint of their job's key that takes the type.
INSERT INTO webhook_events (endpoint_id, type, job_id, recipient_id, payload)
SELECT w.id, %s, r.job_id, r.id,
       JSON_OBJECT('type', %s,
                   'timestamp', DATE_FORMAT(UTC_TIMESTAMP(6), '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ'),
                   'data', JSON_OBJECT(
                       'job_id', r.job_id, 'recipient_id', r.id, 'to_email', r.to_email,
                       'status', r.status, 'error_code', r.error_code, 'error', r.error,
                       'attempts', r.attempts, 'gmail_message_id', r.gmail_message_id,
                       'message_id', r.message_id,
                       'metadata', JSON_EXTRACT(j.metadata, '$'),
                       'recipient_metadata', JSON_EXTRACT(r.metadata, '$'),
                       'test', JSON_EXTRACT(IF(k.test_mode IS NULL, 'false', 'true'), '$')))
FROM {recipients}
JOIN jobs j ON j.id = r.job_id
JOIN api_keys k ON k.id = j.api_key_id
JOIN webhook_endpoints w ON w.api_key_id = j.api_key_id AND w.enabled = 1
WHERE r.status IN ({statuses}) AND JSON_CONTAINS(w.events, JSON_QUOTE(%s))
ORDER BY r.id, w.id;

-- name: recipients_by_ids
-- A source of webhook_recipient_events: the recipients of a JSON array of ids.
JSON_TABLE(%s, '$[*]' COLUMNS (id BIGINT PATH '$')) AS e
STRAIGHT_JOIN job_recipients r ON r.id = e.id;

-- name: recipients_of_job
-- A source of webhook_recipient_events: every recipient of one job.
(SELECT * FROM job_recipients WHERE job_id = %s) AS r;

-- name: webhook_job_events
-- job.completed / job.paused of the jobs {ids}. Args: type, type, counts (JSON text or NULL),
-- the type again, then the ids.
INSERT INTO webhook_events (endpoint_id, type, job_id, payload)
SELECT w.id, %s, j.id,
       JSON_OBJECT('type', %s,
                   'timestamp', DATE_FORMAT(UTC_TIMESTAMP(6), '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ'),
                   'data', JSON_OBJECT(
                       'job_id', j.id, 'status', j.status, 'reason', j.status_reason,
                       'paused_by', j.paused_by, 'total', j.total,
                       'counts', JSON_EXTRACT(%s, '$'),
                       'metadata', JSON_EXTRACT(j.metadata, '$'),
                       'test', JSON_EXTRACT(IF(k.test_mode IS NULL, 'false', 'true'), '$')))
FROM jobs j
JOIN api_keys k ON k.id = j.api_key_id
JOIN webhook_endpoints w ON w.api_key_id = j.api_key_id AND w.enabled = 1
                        AND JSON_CONTAINS(w.events, JSON_QUOTE(%s))
WHERE j.id IN ({ids})
ORDER BY j.id, w.id;

-- name: active_sender_jobs
-- The jobs pause_sender_jobs is about to pause (locked: their job.paused events follow).
SELECT id FROM jobs WHERE sender_email = %s AND status IN ('queued', 'running') FOR UPDATE;

-- name: set_job_metadata
UPDATE jobs SET metadata = %s WHERE id = %s;

-- name: insert_webhook_endpoint
INSERT INTO webhook_endpoints (api_key_id, url, description, events, batch_size, secret)
VALUES (%s, %s, %s, %s, %s, %s);

-- name: webhook_endpoint
SELECT id, api_key_id, url, description, events, batch_size, enabled, disabled_reason,
       disabled_at, failing_since, next_attempt_at, created_at, previous_secret_until,
       secret, IF(previous_secret_until > UTC_TIMESTAMP(6), previous_secret, NULL) AS previous_secret
FROM webhook_endpoints WHERE id = %s;

-- name: webhook_endpoints_page
-- A key's endpoints (%(api_key_id)s NULL: every key's, for operators), in id order.
SELECT id, api_key_id, url, description, events, batch_size, enabled, disabled_reason,
       disabled_at, failing_since, next_attempt_at, created_at, previous_secret_until,
       NULL AS secret, NULL AS previous_secret
FROM webhook_endpoints
WHERE (%(api_key_id)s IS NULL OR api_key_id = %(api_key_id)s) AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- name: rotate_webhook_secret
UPDATE webhook_endpoints
SET previous_secret = secret, previous_secret_until = UTC_TIMESTAMP(6) + INTERVAL %s SECOND,
    secret = %s
WHERE id = %s;

-- name: delete_webhook_events
DELETE FROM webhook_events WHERE endpoint_id = %s;

-- name: delete_webhook_deliveries
DELETE FROM webhook_deliveries WHERE endpoint_id = %s;

-- name: delete_webhook_endpoint
DELETE FROM webhook_endpoints WHERE id = %s;

-- name: webhook_due_endpoints
-- Endpoints with something to deliver now and nobody delivering it, those that are not failing
-- first (a failing one is served in a lane of its own: it never holds up the others), with
-- whether each is failing. The subqueries take no locks; only the endpoint rows are locked
-- (and skipped when another runner has them).
SELECT e.id, e.failing_since IS NOT NULL AS failing FROM webhook_endpoints e
WHERE e.enabled = 1 AND e.next_attempt_at <= UTC_TIMESTAMP(6)
  AND (e.lease_expires_at IS NULL OR e.lease_expires_at <= UTC_TIMESTAMP(6))
  AND (EXISTS (SELECT 1 FROM webhook_events v WHERE v.endpoint_id = e.id AND v.delivery_id IS NULL)
       OR EXISTS (SELECT 1 FROM webhook_deliveries d
                  WHERE d.endpoint_id = e.id AND d.status = 'pending'))
ORDER BY e.failing_since IS NOT NULL, e.next_attempt_at LIMIT %s
FOR UPDATE SKIP LOCKED;

-- name: claim_webhook_endpoints
-- {ids}: a placeholder list. Args: runner id, lease (microseconds), the ids.
UPDATE webhook_endpoints
SET claimed_by = %s, lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE id IN ({ids});

-- name: release_webhook_endpoint
UPDATE webhook_endpoints SET claimed_by = NULL, lease_expires_at = NULL
WHERE id = %s AND claimed_by = %s;

-- name: renew_webhook_lease
-- 1 row: the lease is still this runner's (renewed for %s microseconds), the endpoint enabled.
UPDATE webhook_endpoints SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE id = %s AND claimed_by = %s AND lease_expires_at > UTC_TIMESTAMP(6) AND enabled = 1;

-- name: webhook_pending_deliveries
-- The endpoint's oldest undelivered POSTs: they are sent one at a time, in this order.
SELECT id, msg_id, attempts FROM webhook_deliveries
WHERE endpoint_id = %s AND status = 'pending' ORDER BY id LIMIT %s;

-- name: webhook_unbatched_events
SELECT id FROM webhook_events WHERE endpoint_id = %s AND delivery_id IS NULL ORDER BY id LIMIT %s;

-- name: insert_webhook_delivery
-- executemany: one multi-row INSERT for the new deliveries of a round.
INSERT INTO webhook_deliveries (endpoint_id, msg_id, events, next_attempt_at)
VALUES (%s, %s, %s, UTC_TIMESTAMP(6));

-- name: webhook_deliveries_by_msg_id
-- {ids}: a placeholder list of webhook-ids.
SELECT id, msg_id FROM webhook_deliveries WHERE msg_id IN ({ids});

-- name: batch_webhook_events
-- {case}: "WHEN id <= %s THEN %s" per delivery in id order (its last event id, the delivery);
-- {ids}: the event ids.
UPDATE webhook_events SET delivery_id = CASE {case} END
WHERE id IN ({ids}) AND delivery_id IS NULL;

-- name: webhook_delivery_payloads
-- {ids}: a placeholder list of delivery ids.
SELECT delivery_id, payload FROM webhook_events WHERE delivery_id IN ({ids}) ORDER BY id;

-- name: webhook_delivered
-- {ids}: a placeholder list of delivery ids. Args: the status code, the ids.
UPDATE webhook_deliveries
SET status = 'delivered', attempts = attempts + 1, last_attempt_at = UTC_TIMESTAMP(6),
    last_status_code = %s, last_error = NULL, next_attempt_at = NULL,
    delivered_at = UTC_TIMESTAMP(6)
WHERE id IN ({ids}) AND status = 'pending';

-- name: webhook_endpoint_succeeded
UPDATE webhook_endpoints SET failing_since = NULL, next_attempt_at = UTC_TIMESTAMP(6)
WHERE id = %s AND claimed_by = %s;

-- name: webhook_attempt_failed
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_attempt_at = UTC_TIMESTAMP(6), last_status_code = %s,
    last_error = %s, next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
WHERE id = %s AND status = 'pending';

-- name: webhook_endpoint_failed
-- Args: delay (microseconds), the reason when it is disabled now (NULL: it is not), the
-- endpoint, the runner. The lease is given back: the next attempt is due after the delay.
UPDATE webhook_endpoints
SET failing_since = COALESCE(failing_since, UTC_TIMESTAMP(6)),
    next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL %(delay)s MICROSECOND,
    disabled_at = IF(%(reason)s IS NULL, disabled_at, UTC_TIMESTAMP(6)),
    disabled_reason = COALESCE(%(reason)s, disabled_reason),
    enabled = IF(%(reason)s IS NULL, enabled, 0),
    claimed_by = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND claimed_by = %(runner)s;

-- name: webhook_deliveries_page
-- An endpoint's deliveries, newest first, keyset paged by id.
SELECT id, endpoint_id, msg_id, status, events, attempts, last_attempt_at, last_status_code,
       last_error, next_attempt_at, delivered_at, created_at
FROM webhook_deliveries
WHERE endpoint_id = %s AND id < %s ORDER BY id DESC LIMIT %s;

-- name: webhook_delivery
SELECT id, endpoint_id, msg_id, status, events, attempts, last_attempt_at, last_status_code,
       last_error, next_attempt_at, delivered_at, created_at
FROM webhook_deliveries WHERE id = %s;

-- name: retry_webhook_delivery
-- An operator's or client's retry: due now (a delivered one is sent again).
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = UTC_TIMESTAMP(6)
WHERE id = %s AND endpoint_id = %s;

-- name: webhook_endpoint_due_now
-- ... and its endpoint is enabled again and due now.
UPDATE webhook_endpoints
SET enabled = 1, disabled_reason = NULL, disabled_at = NULL, failing_since = NULL,
    next_attempt_at = UTC_TIMESTAMP(6)
WHERE id = %s;

-- name: oldest_undelivered_event_age
-- Seconds since the oldest event of an enabled endpoint that was not delivered yet.
SELECT TIMESTAMPDIFF(MICROSECOND, MIN(v.created_at), UTC_TIMESTAMP(6)) / 1e6
FROM webhook_events v
JOIN webhook_endpoints w ON w.id = v.endpoint_id AND w.enabled = 1
LEFT JOIN webhook_deliveries d ON d.id = v.delivery_id
WHERE v.delivery_id IS NULL OR d.status = 'pending';

-- name: purge_count_webhook_events
-- Events of POSTs delivered before the cut-off (retention deletes them with their deliveries).
SELECT COUNT(*) FROM webhook_events e
JOIN webhook_deliveries d ON d.id = e.delivery_id
WHERE d.status = 'delivered' AND d.delivered_at < %s;

-- name: purge_delivered_webhook_events
SELECT e.id, e.delivery_id FROM webhook_deliveries d
JOIN webhook_events e ON e.delivery_id = d.id
WHERE d.status = 'delivered' AND d.delivered_at < %s
ORDER BY d.delivered_at, e.id LIMIT %s;

-- name: delete_webhook_events_by_id
-- {ids}: a placeholder list (at most PK_CHUNK).
DELETE FROM webhook_events WHERE id IN ({ids});

-- name: delete_emptied_webhook_deliveries
-- {ids}: deliveries whose events were just deleted; those with none left go.
DELETE FROM webhook_deliveries
WHERE id IN ({ids}) AND NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.delivery_id = webhook_deliveries.id);

-- ===== export: a job's recipients as CSV (issue 18) ===========================================

-- name: export_recipients_page
-- One keyset page of a job's recipients for the CSV export: only the exported columns (never
-- the variables, megabytes a job), in id order from %(after)s.
SELECT id, to_email, name, status, attempts, error_code, error, sent_at, gmail_message_id,
       locale, locale_used, metadata
FROM job_recipients
WHERE job_id = %(job_id)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- ===== plans before sending: estimates (issue 18) =============================================

-- name: sender_plan
-- What an estimate needs, in one round trip (a far database pays each: issue 12): the sender's
-- own limits (`mailjobs senders set`; NULL, or no row: the settings'), the unsent recipients of
-- its active jobs but one (%(exclude)s: 0 excludes none; paused jobs are not counted until they
-- are resumed), and its sends in the last 24 hours.
SELECT (SELECT rate_per_minute FROM senders WHERE email = %(sender)s) AS rate_per_minute,
       (SELECT daily_cap FROM senders WHERE email = %(sender)s) AS daily_cap,
       (SELECT COUNT(*) FROM jobs j JOIN job_recipients r ON r.job_id = j.id
        WHERE j.sender_email = %(sender)s AND j.status IN ('queued', 'scheduled', 'running')
          AND j.id <> %(exclude)s AND r.status IN ('queued', 'retrying', 'sending')) AS backlog,
       (SELECT COALESCE(SUM(sends), 0) FROM sender_hourly_sends
        WHERE sender_email = %(sender)s AND hour_start > UTC_TIMESTAMP() - INTERVAL 24 HOUR)
         AS sent_24h;

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

-- ===== verified send-as addresses (issue 18) ================================================

-- name: credentialed_senders
-- Senders a Gmail call can be made for: an OAuth grant of their own or a delegated service-
-- account key (their address's or their domain's), and not revoked. Bounce checks and send-as
-- reads go over these.
SELECT s.email FROM senders s
WHERE s.auth_state <> 'auth_revoked'
  AND (s.credentials IS NOT NULL OR EXISTS (
         SELECT 1 FROM delegated_keys d
         WHERE d.pattern IN (s.email, CONCAT('*@', SUBSTRING_INDEX(s.email, '@', -1)))))
ORDER BY s.email;

-- name: claim_send_as_check
-- 1 row: this runner reads the sender's send-as list now; the next read is due in %s seconds.
UPDATE senders SET send_as_due_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND
WHERE email = %s AND (send_as_due_at IS NULL OR send_as_due_at <= UTC_TIMESTAMP(6));

-- name: delete_send_as
DELETE FROM send_as_addresses WHERE account = %s;

-- name: insert_send_as
INSERT INTO send_as_addresses (account, address, is_primary, verification_status)
VALUES (%s, %s, %s, %s);

-- name: send_as_read
UPDATE senders SET send_as_read_at = UTC_TIMESTAMP(6), send_as_error = NULL,
                   send_as_due_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND
WHERE email = %s;

-- name: send_as_failed
-- The list stays as it was (or unknown); the next read is due in %s seconds.
UPDATE senders SET send_as_error = %s, send_as_due_at = UTC_TIMESTAMP(6) + INTERVAL %s SECOND
WHERE email = %s;

-- name: send_as_for
-- What a POST's sender_email is checked against: the rows of the lists that name it (as their
-- account, or as an address), the credentials it has of its own (own: an OAuth grant or a
-- delegated key), and whether any list is known at all. Args: the address, five times.
SELECT 'list' AS kind, a.account, a.address, a.is_primary, a.verification_status
FROM send_as_addresses a JOIN senders s ON s.email = a.account
WHERE s.send_as_read_at IS NOT NULL AND s.auth_state <> 'auth_revoked'
  AND (a.account = %s OR a.address = %s)
UNION ALL
SELECT 'own', email, NULL, NULL, NULL FROM senders WHERE email = %s AND credentials IS NOT NULL
UNION ALL
SELECT 'own', pattern, NULL, NULL, NULL FROM delegated_keys
WHERE pattern IN (%s, CONCAT('*@', SUBSTRING_INDEX(%s, '@', -1)))
UNION ALL
(SELECT 'known', email, NULL, NULL, NULL FROM senders
 WHERE send_as_read_at IS NOT NULL AND auth_state <> 'auth_revoked' LIMIT 1);

-- name: verified_send_as
-- Every verified address of the known lists (for a 400's list of allowed ones), up to %s.
SELECT DISTINCT a.address FROM send_as_addresses a JOIN senders s ON s.email = a.account
WHERE s.send_as_read_at IS NOT NULL AND s.auth_state <> 'auth_revoked'
  AND (a.is_primary = 1 OR a.verification_status = 'accepted')
ORDER BY a.address LIMIT %s;

-- name: send_as_account
-- The account whose credentials send as an address that has none of its own: the account
-- whose known list has it verified.
SELECT a.account FROM send_as_addresses a JOIN senders s ON s.email = a.account
WHERE a.address = %s AND a.account <> %s AND s.send_as_read_at IS NOT NULL
  AND s.auth_state <> 'auth_revoked'
  AND (a.is_primary = 1 OR a.verification_status = 'accepted')
ORDER BY a.account LIMIT 1;

-- ===== attachments and inline images (attachments/, issue 16) ===============================
-- name: insert_attachment
-- A new upload, not yet complete (sha256 NULL until its last chunk is stored).
INSERT INTO attachments (public_id, api_key_id, content_type, filename) VALUES (%s, %s, %s, %s);

-- name: insert_attachment_chunk
INSERT INTO attachment_chunks (attachment_id, seq, data) VALUES (%s, %s, %s);

-- name: finish_attachment
UPDATE attachments SET sha256 = %s, size = %s, chunks = %s, complete = 1,
                       last_used_at = UTC_TIMESTAMP(6)
WHERE id = %s;

-- name: attachment_by_sha
SELECT id, public_id, api_key_id, sha256, size, content_type, filename, chunks, created_at,
       last_used_at
FROM attachments WHERE api_key_id = %s AND sha256 = %s AND complete = 1;

-- name: attachment_by_public_id
SELECT id, public_id, api_key_id, sha256, size, content_type, filename, chunks, created_at,
       last_used_at
FROM attachments WHERE public_id = %s AND api_key_id = %s AND complete = 1;

-- name: attachments_by_public_ids
-- The key's complete attachments among a placeholder list of public ids, locked against a
-- concurrent DELETE until the job that uses them is committed.
SELECT id, public_id, api_key_id, sha256, size, content_type, filename, chunks, created_at,
       last_used_at
FROM attachments WHERE api_key_id = %s AND complete = 1 AND public_id IN ({ids})
LOCK IN SHARE MODE;

-- name: attachment_for_update
SELECT id FROM attachments WHERE public_id = %s AND api_key_id = %s AND complete = 1 FOR UPDATE;

-- name: touch_attachments
UPDATE attachments SET last_used_at = UTC_TIMESTAMP(6) WHERE id IN ({ids});

-- name: attachment_used_by
-- An unfinished job that uses the attachment (DELETE answers 409 naming it).
SELECT j.id FROM job_attachments ja JOIN jobs j ON j.id = ja.job_id
WHERE ja.attachment_id = %s
  AND j.status NOT IN ('completed', 'completed_with_errors', 'failed', 'cancelled')
LIMIT 1;

-- name: attachment_chunks
SELECT data FROM attachment_chunks WHERE attachment_id = %s ORDER BY seq;

-- name: attachment_row
SELECT id, public_id, api_key_id, sha256, size, content_type, filename, chunks, created_at,
       last_used_at
FROM attachments WHERE id = %s AND complete = 1;

-- name: delete_attachment_chunks
DELETE FROM attachment_chunks WHERE attachment_id = %s;

-- name: delete_attachment_uses
DELETE FROM job_attachments WHERE attachment_id = %s;

-- name: delete_attachment
DELETE FROM attachments WHERE id = %s;

-- name: insert_job_attachment
INSERT IGNORE INTO job_attachments (job_id, attachment_id) VALUES (%s, %s);

-- name: set_job_attachments
UPDATE jobs SET attachments = %s WHERE id = %s;

-- name: job_attachment_list
SELECT attachments FROM jobs WHERE id = %s;

-- name: unused_attachments
-- Attachments unused since the cut-off: uploaded or last referenced by a POST before it, and no
-- job that uses them unfinished or finished after it; and uploads stopped halfway (incomplete)
-- for more than a day.
SELECT a.id FROM attachments a
WHERE (a.complete = 1 AND a.last_used_at < %(cutoff)s
       AND NOT EXISTS (SELECT 1 FROM job_attachments ja JOIN jobs j ON j.id = ja.job_id
                       WHERE ja.attachment_id = a.id
                         AND (j.finished_at IS NULL OR j.finished_at >= %(cutoff)s)))
   OR (a.complete = 0 AND a.created_at < %(stale)s)
LIMIT %(limit)s;

-- name: delete_job_attachment_uses
DELETE FROM job_attachments WHERE job_id = %s;

-- name: lock_attachments
-- In the transaction storing a job: its attachments still exist, and stay until it commits.
SELECT id FROM attachments WHERE id IN ({ids}) AND complete = 1 LOCK IN SHARE MODE;
