"""Every tunable of mailjobs, with its default and what it bounds.

Like rq's ``defaults.py``: one place that says what each knob is for. ``settings.py`` reads the
environment (and ``.env``) over these values; the README's configuration table is checked
against ``ENV_DEFAULTS`` by a test, so the two cannot drift apart.
"""

# --- HTTP server -----------------------------------------------------------------------------
HOST = "127.0.0.1"
PORT = 5000
# waitress worker threads: requests served in parallel by one API process.
HTTP_THREADS = 8
# Bytes of one answer waitress keeps queued for a slow client before the app's thread waits
# (waitress' outbuf_high_watermark, 16 MiB by default). A streamed answer (the CSV export) is
# produced faster than most clients read it: without this bound its first 16 MiB would sit in
# the server's memory (and its heap stay that large). Answers smaller than this are unaffected.
HTTP_OUTBUF_HIGH_WATERMARK = 1024 * 1024
# Largest request body accepted (bytes). 100,000 recipients with a few variables each is ~15 MB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Largest recipient list of one job; a bigger list is split by the client into several jobs.
MAX_RECIPIENTS_PER_JOB = 100_000
# Requests with a body over LARGE_BODY_BYTES are enqueued at most this many at a time per API
# process (a 100,000-recipient request holds its 10 MB body and two chunks of recipients, ~40-60
# MB, while it is stored: 4 at once grew the server by ~160 MB in bench/enqueue.py; ~300 MB each
# before issue 17); others wait up to DB_POOL_TIMEOUT x 6 seconds, then get 503 with Retry-After.
LARGE_ENQUEUE_CONCURRENCY = 4
LARGE_BODY_BYTES = 1024 * 1024
# Default and largest page size of the list endpoints.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Recipients read per database round trip by the CSV export (export.py): its memory is one
# page, whatever the job's size; each page is one short query under its own request deadline.
EXPORT_PAGE_SIZE = 2000

# --- Database ----------------------------------------------------------------------------------
# Seconds to open a connection to MySQL, the handshake included (pymysql itself bounds only the
# TCP connect by this and waits DB_READ_TIMEOUT for the handshake; db_guard bounds both by it).
DB_CONNECT_TIMEOUT = 5
# Seconds one read/write on a MySQL connection may take; without them a dead server can hang a
# thread forever (the field failure this product exists to prevent).
DB_READ_TIMEOUT = 30
DB_WRITE_TIMEOUT = 30
# Connections in the pool of one process (API threads + runner threads share it).
DB_POOL_SIZE = 10
# Seconds a caller waits for a free pooled connection before DatabaseUnavailable is raised
# (DBUtils' own blocking wait has no limit).
DB_POOL_TIMEOUT = 5.0
# Attempts to obtain a working connection before giving up, with exponential backoff between
# them starting at DB_RETRY_BASE seconds and capped at DB_RETRY_MAX.
DB_RETRY_ATTEMPTS = 3
DB_RETRY_BASE = 0.2
DB_RETRY_MAX = 2.0
# Seconds `mailjobs serve`, `worker` and `migrate` keep trying to reach the database at start-up
# (each try logged, pauses doubling to 5 s) before they exit with one sentence; other commands
# try once. A service manager's restart then takes over.
STARTUP_DB_WAIT = 60.0
# Seconds all the database work of one API request may take: pool wait, connect, handshake,
# every statement and the retries together. Past it the answer is 503 with Retry-After.
DB_REQUEST_DEADLINE = 10.0
# Seconds a ping of a pooled connection (on checkout, when it was idle) and the circuit
# breaker's probe may wait: a healthy server answers a ping in milliseconds.
DB_PING_TIMEOUT = 2.0
# Seconds the circuit breaker stays open after a timeout or a refused connection: meanwhile
# every database call of this process (API threads and runner) fails at once; then one probe
# at a time checks the server, and the first success closes it.
DB_BREAKER_INTERVAL = 2.0
# With several hosts in DATABASE_URL (a Galera cluster): seconds after new connections moved
# away from the first listed host before they try it first again.
DB_FAILBACK_AFTER = 300.0
# Seconds /healthz's own database check may take (its own connection, outside the pool), so
# /healthz answers within 2 s even when the database does not.
HEALTHZ_DB_TIMEOUT = 1.5
# A claim that loses a deadlock or lock wait (rolled back whole) is run again this many times.
CONFLICT_RETRIES = 4
# Rows per multi-row INSERT when storing recipients (each statement also stays under half of
# max_allowed_packet): 10,000 recipients are one round trip.
INSERT_BATCH = 10000
# Recipients of a POST of more than INSERT_BATCH recipients are validated, checked and stored a
# chunk at a time (src/enqueue.py): the server holds about two chunks of them as Python objects
# at once. Smaller POSTs are checked whole, then stored in one statement.
ENQUEUE_CHUNK = 5000

# --- Local development database (used when DATABASE_URL is not set) ----------------------------
LOCAL_DB_DIR = "var/mariadb"
LOCAL_DB_NAME = "mailjobs"

# --- API keys ------------------------------------------------------------------------------------
# last_used_at is written at most this often per key (seconds), not on every request.
KEY_TOUCH_INTERVAL = 60

# --- JobRunner ---------------------------------------------------------------------------------
# Start a runner thread inside the API process (1) or leave sending to `mailjobs worker` (0).
EMBEDDED_RUNNER = True
# /healthz answers 503 unless at least this many runners have a fresh heartbeat (0: only when
# this process runs one itself).
EXPECT_RUNNERS = 0
# Seconds between polls for work when there is none (stop_event.wait, never a bare sleep).
POLL_INTERVAL = 0.5
# Seconds between heartbeat row writes; a runner is dead after 3 x this without one.
HEARTBEAT_INTERVAL = 5.0
# Log lines as `text` (human) or `json` (one object per line: ts, level, logger, message, and on
# each recipient's outcome job_id, recipient_id, to_email, outcome, error_code, attempt, runner).
LOG_FORMAT = "text"
# Seconds between INFO heartbeat log lines.
HEARTBEAT_LOG_INTERVAL = 30.0
# Seconds a claim is valid; renewed every third of it while the work goes on. Work whose lease
# expired (its runner died) is taken over by another runner.
LEASE_SECONDS = 60
# Most recipients claimed in one transaction.
CLAIM_BATCH = 100
# Most recipients claimed in one transaction when the database is far: a runner whose claim
# pass takes longer than 20 ms (slow round trips) claims CLAIM_BATCH per 20 ms of it, up to
# this, and holds three passes' worth of its send rate (up to twice this), so its sending
# threads never wait on a claim.
CLAIM_BATCH_MAX = 5000
# Sends in flight per runner (one transport connection per sending thread).
RUNNER_CONCURRENCY = 4
# Attempts per recipient before it fails for good (transient errors only).
MAX_ATTEMPTS = 5
# Exponential backoff with full jitter for transient errors: random(0, min(MAX, BASE * 2^n)),
# never shorter than the server's Retry-After.
RETRY_BASE_DELAY = 10.0
RETRY_MAX_DELAY = 900.0
# Seconds a recipient may keep being refused before its message left (a refused connection, a
# 4xx before DATA, a busy connection slot, Gmail's concurrent-request 429) without an attempt:
# such refusals do not count towards MAX_ATTEMPTS, so this bounds a server that refuses forever;
# past it the recipient fails with the last refusal. A job's expires_at still applies.
MAX_DEFER = 21600.0
# Outcomes are written in batches: at most this many rows or this many seconds apart.
RECORD_FLUSH_ROWS = 200
RECORD_FLUSH_INTERVAL = 0.5
# Longest wait between retries while the database is unreachable.
DB_BACKOFF_MAX = 30.0
# What to do with a recipient whose last send may have reached Gmail (its runner died, a 5xx,
# a timeout): check (search the sender's mailbox for its Message-ID; needs the gmail.readonly
# scope), resend (at-least-once), hold (status in_doubt, an operator decides), or auto (check
# where the token's scope allows it, else resend).
IN_DOUBT_POLICY = "auto"
# Seconds an in-doubt recipient waits before it is looked up (check, auto), whatever its backoff
# drew: Gmail may still be finishing a send we stopped waiting for (GMAIL_TIMEOUT), and its
# search finds a message a moment after it was sent. Looked up sooner, it is not found yet and is
# sent twice. 0 leaves the backoff alone.
IN_DOUBT_CHECK_DELAY = 30.0
# Auto-pause: a job is paused when more than MAX_ERROR_RATE of its last ERROR_WINDOW final
# outcomes (as seen by one runner) failed, so a broken template or account stops early.
ERROR_WINDOW = 50
MAX_ERROR_RATE = 0.5

# --- Tenant budgets: what one tenant's template may cost -------------------------------------
# Largest html or text template, in UTF-8 bytes (the columns are MEDIUMTEXT: 16 MB of bytes).
TEMPLATE_MAX_BYTES = 5_000_000
# Most elements (tags, expressions, names, literals) in one template part: compiling costs
# ~0.1 ms and ~10 KB each, so 100,000 "{{ a }}" would take seconds and a GB at POST.
TEMPLATE_MAX_NODES = 5000
# Deepest nesting of blocks and expressions in a template (Python's own compiler stops near 100).
TEMPLATE_MAX_DEPTH = 40
# Most elements in a template's default and all its language variants together (issue 16): each
# variant is compiled at POST, so without it 50 variants of three parts at TEMPLATE_MAX_NODES
# would compile for a minute in one request. 30,000 is twice three parts at the limit.
TEMPLATE_MAX_TOTAL_NODES = 30000
# Seconds one recipient's render (subject, html and text) may take; over it: template_error.
RENDER_TIMEOUT = 2.0
# Largest rendered message (subject + html + text) of one recipient, in bytes; text produced
# while rendering, intermediate values included, may be at most twice this (in characters).
RENDER_MAX_BYTES = 10 * 1024 * 1024

# --- Senders -------------------------------------------------------------------------------------
# Sends per minute per sender, over all runners (Gmail: 6,000 units/min per user at 100 units a
# send). 0 means unlimited (benchmarks, relays that allow it).
SENDER_RATE_PER_MINUTE = 60
# Largest burst of the per-minute token bucket (seconds' worth of the rate).
SENDER_BURST_SECONDS = 5.0
# Sends per sender in any rolling 24 hours (Workspace 2,000; consumer Gmail 500). 0: unlimited.
SENDER_DAILY_CAP = 2000
# How long a sender is deferred after a daily-limit answer that names no time.
DAILY_LIMIT_PAUSE = 3600.0
# A job whose estimate (estimates.py: the sender's limits and what is queued for it) needs more
# than this many days gets a `warnings` entry in the POST answer. 0: never warn.
WARN_DAYS = 1.0

# --- Transports ----------------------------------------------------------------------------------
# gmail, smtp, outbox or null. Unset: gmail when GOOGLE_CLIENT_SECRETS is set, else outbox.
MAIL_TRANSPORT = ""
OUTBOX_DIR = "var/outbox"
# Gmail API base URL (tests point it at a fake Gmail on 127.0.0.1).
GMAIL_API_ENDPOINT = ""
# OAuth token endpoint for refreshes ("" keeps each credential's own, Google's).
GMAIL_TOKEN_URI = ""
# Seconds any one HTTP call to Gmail may take.
GMAIL_TIMEOUT = 30.0
# OAuth client of the Google Cloud project (installed-app client JSON), for `mailjobs auth`.
GOOGLE_CLIENT_SECRETS = ""
# Fernet key (urlsafe base64, 32 bytes) that encrypts stored refresh tokens.
TOKEN_ENCRYPTION_KEY = ""

# --- SMTP transport (MAIL_TRANSPORT=smtp) -------------------------------------------------------
SMTP_HOST = ""
SMTP_PORT = 587
# starttls, ssl (implicit TLS, usually port 465) or none
SMTP_SECURITY = "starttls"
SMTP_USERNAME = ""
SMTP_PASSWORD = ""
# Seconds any one SMTP command may take.
SMTP_TIMEOUT = 30.0
# Messages sent over one connection before it is closed and a new one opened.
SMTP_MAX_MESSAGES_PER_CONNECTION = 100
# Open SMTP connections over ALL runners on all hosts (shared through the database): N processes
# each opening M connections is what caused "421 Too many concurrent connections".
SMTP_MAX_CONNECTIONS = 4
# Extra wait before retrying after a 421/4xx answer (servers shed load this way).
SMTP_TRANSIENT_DELAY = 60.0

# --- The far side's limits (learned_limits.py) ----------------------------------------------------
# Sends in flight per Gmail sender in one runner process; Gmail refuses more with 429 "Too many
# concurrent requests for user" and does not say how many it allows.
GMAIL_MAX_CONCURRENT_PER_SENDER = 10
# A refusal while others were open lowers the cap of that SMTP server or Gmail sender, for every
# runner, to what was open. It holds LEARNED_CAP_HOLD seconds, then goes up by one after every
# LEARNED_CAP_RAISE_AFTER successful sends, back to the configured value.
LEARNED_CAP_HOLD = 600.0
LEARNED_CAP_RAISE_AFTER = 200

# --- Deliverability ------------------------------------------------------------------------------
# Public base URL of this API (e.g. https://mail.example.com): when set, every message carries
# List-Unsubscribe: <BASE/u/TOKEN> and List-Unsubscribe-Post (RFC 8058 one-click); a job may opt
# out with "unsubscribe": false. Unset: no such header (a job asking for one is refused).
UNSUBSCRIBE_BASE_URL = ""
# Days an unsubscribe link works (its token is signed with SECRET_KEY and carries its time).
UNSUBSCRIBE_TOKEN_DAYS = 90
# Seconds between bounce checks of each Gmail sender's mailbox (DSNs from mailer-daemon); 0: off.
BOUNCE_CHECK_INTERVAL = 600
# Seconds between reads of each Gmail sender's send-as addresses (users.settings.sendAs.list:
# the aliases a POST's sender_email may be); 0: only at `mailjobs auth`.
SEND_AS_CHECK_INTERVAL = 86400
# Bytes (as JSON) of the `metadata` object of a job, and of each recipient's, at most.
METADATA_MAX_BYTES = 4096
# From addresses (or domains) of the feedback loops you registered (Yahoo CFL, Microsoft JMRP,
# your ISP's...), comma-separated: the bounce check also reads their ARF complaint reports and
# suppresses the complaining address. Empty: complaints are not read.
FEEDBACK_LOOP_FROM = ""
# Bytes of one mailbox message a bounce check reads (anyone can mail a sender's mailbox): a
# bigger one is read up to this size. A report's own parts come first, so a genuine DSN or ARF
# report is still understood; only the returned copy of the original may be cut.
MAILBOX_MAX_MESSAGE_BYTES = 1048576

# --- Data retention (retention.py, `mailjobs purge`) -------------------------------------------
# Days after a job finished (completed, completed_with_errors, failed, cancelled) at which its
# recipients' variables (the personal values templates were rendered with) are erased; rows,
# statuses, errors and counts stay. Bounce messages (the record of mailbox messages read) older
# than this are deleted too. 0: never.
RETENTION_DAYS = 90
# Days after a job finished at which it is deleted whole with its recipients. 0 (the default):
# never. Deleting is irreversible and takes the history `mailjobs trace` answers from (and the
# job's Idempotency-Key) with it, so it is left for an operator to choose.
JOB_RETENTION_DAYS = 0
# Seconds between purges run by the runners (one runner at a time over all hosts, through the
# maintenance_leases row); 0: runners never purge (run `mailjobs purge` from cron instead).
PURGE_INTERVAL = 3600.0
# Rows changed per purge transaction: each batch locks only its own rows, for milliseconds.
PURGE_BATCH = 5000
# Seconds of pause after a full batch (scaled down for a smaller one), so purging yields to
# sends and replicas keep up.
PURGE_PAUSE = 0.1
# Runner rows whose heartbeat is older than this many seconds are deleted (dead or stopped).
DEAD_RUNNER_SECONDS = 86400

# --- Dashboard and metrics ---------------------------------------------------------------------
# Signs the dashboard's session cookie and the unsubscribe links; set it in production (the
# same on every API process, at least 32 characters; a placeholder such as CHANGE-ME is refused).
SECRET_KEY = ""
# Port of the Prometheus /metrics server of a standalone worker (0: none). It needs no key: bind
# HOST to a private interface. The API's /metrics needs an operator key.
METRICS_PORT = 0
# 1: metrics carry each sender address as a label (per-tenant detail for whoever can scrape);
# 0: the sender label is "all".
METRICS_SENDER_LABELS = False

# --- Webhooks (webhooks.py, webhook_dispatch.py) ---------------------------------------------
# Seconds to connect to a receiver, and to wait for each read of its answer.
WEBHOOK_TIMEOUT = 10.0
# Seconds between the attempts of a delivery that failed (the last step repeats), each stretched
# by up to 20 % of jitter and at least the receiver's Retry-After: 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 10 h add up to 27.6 h of retries before the endpoint can be disabled.
WEBHOOK_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000,36000"
# Seconds an endpoint may fail every attempt before it is disabled (the reason is shown).
WEBHOOK_DISABLE_AFTER = 432000.0
# 1: receivers on private, loopback and link-local addresses are allowed (tests, an internal
# network); otherwise refused, the address checked at every send (DNS rebinding).
WEBHOOK_ALLOW_PRIVATE = False
# 1: http:// receivers are allowed; otherwise https:// only.
WEBHOOK_ALLOW_HTTP = False
# Endpoints one runner delivers to at once (its webhook threads); a slow receiver holds one.
# As many again are served whose last attempt failed (a lane of their own, so failing or
# hanging receivers never hold up the others' events).
WEBHOOK_CONCURRENCY = 4
# Seconds between a runner's looks for due webhook deliveries when there was nothing to do.
WEBHOOK_POLL_INTERVAL = 0.5
# Seconds a runner holds an endpoint it delivers to; another runner takes it over after that.
WEBHOOK_LEASE_SECONDS = 60
# Seconds the previous secret keeps signing beside the new one after a rotation.
WEBHOOK_ROTATION_OVERLAP = 86400

# --- Development mode ----------------------------------------------------------------------------
# 1: development mode even with a DATABASE_URL: weak or placeholder SECRET_KEY /
# TOKEN_ENCRYPTION_KEY are accepted and `mailjobs serve` creates (and prints) a development
# operator key. Without it, development mode is on only for the project-local database
# (DATABASE_URL unset), which is what `make run` uses.
DEVELOPMENT = False

# How the README shows a default that is not a plain value.
# --- Attachments and inline images (attachments/, issue 16) ------------------------------------
# Bytes one POST /api/attachments may upload (read in chunks, never whole in memory): 413 above.
ATTACHMENT_MAX_BYTES = 26214400
# Bytes of all the files a job carries inline in its POST (content_base64, decoded), for curl
# users; bigger files go through POST /api/attachments.
ATTACHMENT_INLINE_MAX_BYTES = 1048576
# Bytes of one stored chunk of a file (at most a quarter of the server's max_allowed_packet).
ATTACHMENT_CHUNK_BYTES = 1048576
# Bytes of shared files (a job's own, used by every recipient) a runner keeps in memory, least
# recently used first out; a recipient's own files are read when it is rendered, never cached.
ATTACHMENT_CACHE_BYTES = 67108864
# Days an attachment is kept after its last use (its upload, or the end of the last job that
# used it); then the purge deletes it. 0: never.
ATTACHMENT_RETENTION_DAYS = 30

_SHOWN = {
    "DATABASE_URL": "(unset: a project-local MariaDB under var/mariadb)",
    "LOG_LEVEL": "INFO",
    "MAIL_TRANSPORT": "(unset: gmail if GOOGLE_CLIENT_SECRETS is set, else outbox)",
    "GMAIL_API_ENDPOINT": "(unset: Google's)",
    "GMAIL_TOKEN_URI": "(unset: Google's)",
    "GOOGLE_CLIENT_SECRETS": "(unset)",
    "TOKEN_ENCRYPTION_KEY": "(unset: generated into var/token_key on first use)",
    "SMTP_HOST": "(unset)",
    "SMTP_USERNAME": "(unset)",
    "SMTP_PASSWORD": "(unset)",
    "SECRET_KEY": "(unset: generated into var/secret_key on first use)",
    "UNSUBSCRIBE_BASE_URL": "(unset: no List-Unsubscribe header)",
    "FEEDBACK_LOOP_FROM": "(unset: complaint reports are not read)",
}
_NOT_ENV = {"LOCAL_DB_DIR", "LOCAL_DB_NAME", "KEY_TOUCH_INTERVAL", "PAGE_SIZE", "MAX_PAGE_SIZE",
            "DB_RETRY_BASE", "DB_RETRY_MAX", "INSERT_BATCH", "ENQUEUE_CHUNK", "CONFLICT_RETRIES",
            "DEAD_RUNNER_SECONDS", "EXPORT_PAGE_SIZE", "HTTP_OUTBUF_HIGH_WATERMARK"}


def _shown(value: object) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


# Every environment variable settings.py reads, with its default as the README shows it.
ENV_DEFAULTS: dict[str, str] = {
    **{name: _shown(value) for name, value in list(globals().items())
       if name.isupper() and not name.startswith("_") and name not in _NOT_ENV},
    **_SHOWN,
}
