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
# Largest request body accepted (bytes). 100,000 recipients with a few variables each is ~15 MB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Largest recipient list of one job; a bigger list is split by the client into several jobs.
MAX_RECIPIENTS_PER_JOB = 100_000
# Default and largest page size of the list endpoints.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# --- Database ----------------------------------------------------------------------------------
# Seconds to open a TCP/socket connection to MySQL before giving up.
DB_CONNECT_TIMEOUT = 10
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
# Rows per multi-row INSERT when storing recipients.
INSERT_BATCH = 5000

# --- Local development database (used when DATABASE_URL is not set) ----------------------------
LOCAL_DB_DIR = "var/mariadb"
LOCAL_DB_NAME = "mailjobs"

# --- API keys ------------------------------------------------------------------------------------
# last_used_at is written at most this often per key (seconds), not on every request.
KEY_TOUCH_INTERVAL = 60

# The environment variables read by settings.py, each with its default as the README shows it.
ENV_DEFAULTS: dict[str, str] = {
    "DATABASE_URL": "(unset: a project-local MariaDB under var/mariadb)",
    "HOST": HOST,
    "PORT": str(PORT),
    "HTTP_THREADS": str(HTTP_THREADS),
    "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    "MAX_RECIPIENTS_PER_JOB": str(MAX_RECIPIENTS_PER_JOB),
    "DB_CONNECT_TIMEOUT": str(DB_CONNECT_TIMEOUT),
    "DB_READ_TIMEOUT": str(DB_READ_TIMEOUT),
    "DB_WRITE_TIMEOUT": str(DB_WRITE_TIMEOUT),
    "DB_POOL_SIZE": str(DB_POOL_SIZE),
    "DB_POOL_TIMEOUT": str(DB_POOL_TIMEOUT),
    "DB_RETRY_ATTEMPTS": str(DB_RETRY_ATTEMPTS),
    "LOG_LEVEL": "INFO",
}
