"""Shared helpers of the pgi guest tools (pgi-health, pgi-configure, pgi-backup, pgi-datadisk,
pgi-upgrade, pgi-db). Guest contract: docs/image.md. Python 3.11 standard library only, plus
psycopg2 where noted (it ships with tryton-server)."""
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile


def _detect_pg_version():
    """The PostgreSQL major version of this image (15 on Debian 12, 17 on Debian 13): the newest
    server installed under /usr/lib/postgresql (one per image)."""
    try:
        found = [d for d in os.listdir('/usr/lib/postgresql') if d.isdigit() and os.path.exists('/usr/lib/postgresql/%s/bin/postgres' % d)]
    except OSError:
        found = []
    return max(found, key=int) if found else '15'


# Paths of the guest contract (docs/image.md). The PGI_* environment variables exist for the test
# suite (test/unit/image-tools), which runs these tools on a developer's machine against a
# throwaway PostgreSQL cluster and trytond; nothing in the image sets them.
_env = os.environ.get
DATA = _env('PGI_DATA', '/srv/pgi')
DATA_DEVICE = '/dev/disk/by-id/virtio-pgi-data'
STATE_DIR = DATA + '/.pgi'
STATE_FILE = STATE_DIR + '/state.json'
PG_VERSION = _env('PGI_PG_VERSION') or _detect_pg_version()
PG_BIN = '/usr/lib/postgresql/%s/bin' % PG_VERSION
PG_DATA = DATA + '/postgresql/%s/main' % PG_VERSION
PG_HOST = _env('PGI_PGHOST', '/var/run/postgresql')
PG_PORT = _env('PGI_PGPORT', '5432')
PG_TEMPLATE = '/var/lib/pgi/pgdata-template'
FILESTORE = DATA + '/tryton/filestore'
BACKUPS = DATA + '/backups'
RUN_DIR = _env('PGI_RUN_DIR', '/run/pgi')
IMAGE_JSON = _env('PGI_IMAGE_JSON', '/etc/pgi/image.json')
TRYTOND_CONF = _env('PGI_TRYTOND_CONF', '/etc/tryton/trytond.conf')
TRYTON_ADMIN_HASH = STATE_DIR + '/tryton-admin.hash'
TRYTON_URL = _env('PGI_TRYTON_URL', 'http://127.0.0.1:8000')
TEMPLATES_DIR = _env('PGI_TEMPLATES', '/usr/share/pgi/templates')
SYSTEM_DATABASES = ('postgres', 'template0', 'template1')


def log(msg):
    """Diagnostics go to stderr (the journal for units); stdout is for results."""
    sys.stderr.write(msg.rstrip() + '\n')
    sys.stderr.flush()


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(dt):
    return dt.strftime('%Y-%m-%dT%H:%M:%SZ')


def run(args, check=True, input=None, **kw):
    """Runs a program (arguments never carry a secret: those go on stdin)."""
    r = subprocess.run(args, input=input, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError('%s failed (exit %d): %s' % (' '.join(args), r.returncode, (r.stderr or r.stdout).strip()[-800:]))
    return r


def sha256_file(path):
    """The SHA-256 of a file, read 1 MiB at a time (dumps are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, data, mode=0o644):
    """Atomic write (temp file + rename)."""
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp-')
    with os.fdopen(fd, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def image_info():
    return read_json(IMAGE_JSON, {}) or {}


def version_key(v):
    """'1.10.2' > '1.9' (numeric parts; a non-numeric suffix sorts before the release)."""
    parts = []
    for p in str(v).replace('-', '.').split('.'):
        parts.append((0, int(p), '') if p.isdigit() else (-1, 0, p))
    return parts


def run_as(user, args, check=True, input=None, **kw):
    """Runs a program as a system user (no PAM session: runuser's is slow under emulation)."""
    import pwd
    pw = pwd.getpwnam(user)
    env = dict(kw.pop('env', None) or os.environ, HOME=pw.pw_dir, USER=user, LOGNAME=user)
    return run(args, check=check, input=input, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=env, cwd='/', **kw)


_connections = {}


def connect(db='postgres'):
    """psycopg2 connection as the postgres superuser over the local socket (peer auth, with the
    pg_ident map "pgi" letting root act as postgres), autocommit. Cached per database."""
    import psycopg2
    c = _connections.get(db)
    if c is None or c.closed:
        c = psycopg2.connect(dbname=db, user='postgres', host=PG_HOST, port=PG_PORT, connect_timeout=10)
        c.autocommit = True
        _connections[db] = c
    return c


def close(db):
    c = _connections.pop(db, None)
    if c is not None:
        c.close()


def psql(sql, db='postgres', params=None):
    """Runs one SQL statement as postgres; returns the rows as lists of strings."""
    with connect(db).cursor() as cur:
        cur.execute(sql, params)
        if cur.description is None:
            return []
        return [['' if v is None else str(v) for v in row] for row in cur.fetchall()]


def psql_script(script, db='postgres'):
    """Runs SQL statements (values already quoted) as postgres."""
    with connect(db).cursor() as cur:
        cur.execute(script)


def databases():
    return [r[0] for r in psql("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1")]


# tables whose row counts pgi-backup records and --verify compares (the rollout's gate reads them too)
KEY_TABLES = ('res_user', 'party_party', 'company_company', 'product_template', 'account_account', 'account_move',
              'account_move_line', 'account_invoice', 'sale_sale', 'purchase_purchase', 'stock_move')


# The public schema's tables, from the catalog. Not information_schema.tables: that view checks the
# privileges on each of a Tryton database's ~1,500 relations, which costs far more than this
# lookup, and pgi-health runs it on every database every 2 minutes (a class's 30 of them included).
PUBLIC_TABLES_SQL = ("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')")


def row_counts(db):
    present = {r[0] for r in psql(PUBLIC_TABLES_SQL, db=db)}
    counts = {}
    for t in KEY_TABLES:
        if t in present:
            counts[t] = int(psql('SELECT count(*) FROM %s' % quote_ident(t), db=db)[0][0])
    return counts


def is_tryton_db(db):
    """Whether `db` holds a Tryton database (its ir_module table; a catalog lookup, see PUBLIC_TABLES_SQL)."""
    return psql("SELECT to_regclass('public.ir_module') IS NOT NULL", db=db)[0][0] == 'True'


def tryton_module_versions():
    """Version of every installed Tryton module (from its tryton.cfg), as ir.module reports it."""
    import configparser
    import glob
    versions = {}
    base = '/usr/lib/python3/dist-packages/trytond'
    for cfg in glob.glob(base + '/modules/*/tryton.cfg') + glob.glob(base + '/ir/tryton.cfg') + glob.glob(base + '/res/tryton.cfg'):
        cp = configparser.ConfigParser()
        cp.read(cfg)
        name = os.path.basename(os.path.dirname(cfg))
        if cp.has_option('tryton', 'version'):
            versions[name] = cp.get('tryton', 'version')
    return versions


def scram_sha256(password, iterations=4096):
    """A PostgreSQL SCRAM-SHA-256 verifier, computed here so the clear password never reaches
    the server or its logs (what psql's \\password does). PostgreSQL has no library for this in
    Python's standard library, hence these few lines (RFC 5802/7677)."""
    import base64
    import hmac
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac('sha256', password.encode('utf-8'), salt, iterations)
    client_key = hmac.new(salted, b'Client Key', hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b'Server Key', hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode('ascii')
    return 'SCRAM-SHA-256$%d:%s$%s:%s' % (iterations, b64(salt), b64(stored_key), b64(server_key))


def tryton_password_hash(password):
    """A hash res.user accepts (trytond 6.0 verifies with passlib: bcrypt or pbkdf2_sha512)."""
    from passlib.context import CryptContext
    return CryptContext(schemes=['pbkdf2_sha512']).hash(password)


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"
