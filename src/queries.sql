-- Every SQL statement mailjobs runs, each under a "-- name: <name>" header, loaded by
-- dao_mysql.py and run with parameters (%s / %(name)s). Nothing a client sends is ever
-- formatted into this text.

-- name: ping
SELECT 1;

-- name: insert_api_key
INSERT INTO api_keys (name, prefix, secret_hash, allowed_senders, is_operator)
VALUES (%s, %s, %s, %s, %s);

-- name: api_key_by_prefix
SELECT id, name, prefix, secret_hash, allowed_senders, is_operator, created_at, last_used_at,
       revoked_at
FROM api_keys WHERE prefix = %s;

-- name: api_keys_all
SELECT id, name, prefix, secret_hash, allowed_senders, is_operator, created_at, last_used_at,
       revoked_at
FROM api_keys ORDER BY id;

-- name: touch_api_key
UPDATE api_keys SET last_used_at = UTC_TIMESTAMP(6) WHERE id = %s;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = UTC_TIMESTAMP(6)
WHERE (prefix = %s OR CAST(id AS CHAR) = %s) AND revoked_at IS NULL;

-- name: insert_job
INSERT INTO jobs (type, api_key_id, sender_email, from_name, reply_to, subject_template,
                  html_template, text_template, variables, status, total, duplicates_removed,
                  idempotency_key, request_hash)
VALUES ('template', %s, %s, %s, %s, %s, %s, %s, %s, 'queued', %s, %s, %s, %s);

-- name: insert_recipients
INSERT INTO job_recipients (job_id, to_email, name, variables) VALUES (%s, %s, %s, %s);

-- name: job_by_id
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at
FROM jobs WHERE id = %s;

-- name: job_by_idempotency_key
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at
FROM jobs WHERE api_key_id = %s AND idempotency_key = %s;

-- name: jobs_page
-- Newest first, keyset paged by id; %(api_key_id)s NULL lists every key's jobs (operators).
SELECT id, type, api_key_id, sender_email, from_name, reply_to, subject_template, html_template,
       text_template, variables, status, status_reason, total, duplicates_removed,
       idempotency_key, request_hash, created_at, started_at, finished_at, updated_at
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
       updated_at
FROM job_recipients
WHERE job_id = %(job_id)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;

-- name: recipients_page_by_status
SELECT id, job_id, to_email, name, variables, status, attempts, next_attempt_at, claimed_by,
       lease_expires_at, message_id, gmail_message_id, error_code, error, sent_at, created_at,
       updated_at
FROM job_recipients
WHERE job_id = %(job_id)s AND status = %(status)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s;
