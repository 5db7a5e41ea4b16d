"""Paths and settings of the teachers' console. The PGI_CONSOLE_* environment variables exist for
the test suite (test/unit/console), which runs the console natively against a throwaway
PostgreSQL cluster; the image sets none of them."""
import os

from pgilib import DATA, PG_PORT, RUN_DIR

_env = os.environ.get

CONSOLE_DIR = _env('PGI_CONSOLE_DIR', DATA + '/console')
STORE = os.path.join(CONSOLE_DIR, 'console.sqlite')
SECRET_KEY_FILE = os.path.join(CONSOLE_DIR, 'secret.key')
UPLOADS = os.path.join(CONSOLE_DIR, 'uploads')
DOWNLOADS = os.path.join(CONSOLE_DIR, 'downloads')
TMP = os.path.join(CONSOLE_DIR, 'tmp')
# the worker's wake-up FIFO: the web application writes a byte to it when it queues a job
WAKE_FIFO = os.path.join(CONSOLE_DIR, 'worker.wake')
# and it looks at its queue at least this often anyway (the test suite sets an hour, to see that
# the wake-ups alone start the jobs)
WORKER_POLL_S = float(_env('PGI_CONSOLE_WORKER_POLL_S', '1'))

# the web application listens on loopback only: nginx (TLS) is its only client
LISTEN = _env('PGI_CONSOLE_LISTEN', '127.0.0.1:8010')
# the system user and the PostgreSQL role the console runs as (same name: peer authentication on
# the local socket, pg_hba.conf's "local all all peer")
OS_USER = _env('PGI_CONSOLE_USER', 'pgi_console')
DB_ROLE = _env('PGI_CONSOLE_DB_ROLE', 'pgi_console')
# where the AMI's SQL administrator password is checked (by PostgreSQL itself, SCRAM over TCP)
PG_TCP_HOST = _env('PGI_CONSOLE_PG_TCP_HOST', '127.0.0.1')
PG_TCP_PORT = int(_env('PGI_CONSOLE_PG_TCP_PORT', str(PG_PORT)))

# uploaded dumps: at most this size (nginx's client_max_body_size for /console/ says the same)
UPLOAD_MAX_BYTES = int(_env('PGI_CONSOLE_UPLOAD_MAX_BYTES', str(256 << 20)))
# jobs run at the same time (2 cores; the engine's copies are server-side and overlap well)
MAX_JOBS = int(_env('PGI_CONSOLE_MAX_JOBS', '2'))
# the TLS certificate nginx serves (pgi-tls), for the fingerprint shown to the AMI
TLS_CERT = _env('PGI_TLS_CERT', '/etc/pgi/tls/server.crt')
TLS_JSON = _env('PGI_TLS_JSON', os.path.join(RUN_DIR, 'tls.json'))

# sessions: idle and absolute lifetimes (a school day), anonymous ones (login forms) shorter
SESSION_IDLE_S = int(_env('PGI_CONSOLE_SESSION_IDLE_S', str(2 * 3600)))
SESSION_MAX_S = int(_env('PGI_CONSOLE_SESSION_MAX_S', str(12 * 3600)))
ANON_SESSION_S = 3600
# login rate limiting: failures counted over a window, per login and per client address
RATE_WINDOW_S = int(_env('PGI_CONSOLE_RATE_WINDOW_S', str(15 * 60)))
RATE_PER_LOGIN = int(_env('PGI_CONSOLE_RATE_PER_LOGIN', '5'))
RATE_PER_IP = int(_env('PGI_CONSOLE_RATE_PER_IP', '20'))
# one-time codes for setting a password
SETUP_CODE_TTL_S = int(_env('PGI_CONSOLE_SETUP_CODE_TTL_S', str(7 * 24 * 3600)))
PASSWORD_MIN = 10
# files prepared for download, and uploads never imported, are removed after this
FILE_TTL_S = 24 * 3600
# the worker refreshes its index of kept backups this often (and after each job)
BACKUP_INDEX_EVERY_S = 600
# the worker measures the databases' sizes the pages show this often (and after each job)
SIZES_EVERY_S = int(_env('PGI_CONSOLE_SIZES_EVERY_S', '300'))
# the AMI's audit page shows this many lines at a time (a link leads to the older ones)
AUDIT_PAGE = 100
# the web application counts the worker as alive while its heartbeat is this recent
WORKER_STALE_S = 60
