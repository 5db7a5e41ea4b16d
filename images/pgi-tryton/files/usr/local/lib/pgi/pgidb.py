"""pgidb: the database engine of the PGI image, shared by `pgi-db` (which `pgi deploy` and `pgi db`
call over the guest agent), `pgi-health` (its login check) and the teachers' console.

Everything here is SQL and PostgreSQL's own tools: no Tryton pool is loaded (minutes under software
emulation). What Tryton would do is reproduced on its tables, and checked against a real trytond by
test/unit/image-tools. The rules every operation follows (docs/databases.md, "The engine"):

- names are checked before anything starts (a safe subset of PostgreSQL identifiers; the pgi_tmp_,
  pgi_template_ and pgi_verify_ prefixes are the engine's own);
- a per-database lock (flock in /run/pgi/locks): an operation holds an exclusive lock on the
  databases it creates, changes or removes and a shared one on those it only reads; a second
  operation that needs a lock someone holds is refused at once (exit status BUSY, 7);
- the data disk must stay under 90 % (PGI_DB_DISK_LIMIT_PCT) after the operation, by an estimate
  made before it starts, or it is refused (exit status NO_SPACE, 8) with the figures;
- new databases are built under a temporary name (pgi_tmp_...) and renamed when complete: a
  failure drops them, so no half-made database is ever visible under a real name; an existing
  database is never changed by create/copy/class/import/restore --as;
- copies, class databases, restores under a new name and imports are neutralised: scheduled
  actions (ir.cron) off. Tryton 6.0 and 7.0 have no per-database mail setting: mail leaves only
  through trytond.conf's [email] uri, and the image runs no mail server, so nothing is sent.

Errors are DbError(code, message, status, **details); pgi-db prints them as JSON.
"""
import contextlib
import csv
import datetime
import fcntl
import io
import json
import os
import re
import secrets
import subprocess
import time
import unicodedata
# urllib.request is imported where trytond is called (_rpc, _tryton_url): it pulls in http.client,
# email and ssl, most of a second of every pgi-db command's start under software emulation

from pgilib import (BACKUPS, DATA, PG_BIN, PG_HOST, PG_PORT, RUN_DIR, STATE_DIR, TEMPLATES_DIR,
                    TRYTON_ADMIN_HASH, TRYTON_URL, TRYTOND_CONF, image_info, iso, log, now_utc, quote_ident,
                    read_json, run, sha256_file, tryton_password_hash, write_json)

# exit statuses of pgi-db (docs/databases.md); the host maps them to its own exit codes
FAILED, USAGE, INVALID, NOT_FOUND, EXISTS, BUSY, NO_SPACE = 1, 2, 3, 4, 5, 7, 8

NAME_RE = re.compile(r'^[a-z][a-z0-9_]{0,62}$')
PREFIX_RE = re.compile(r'^[a-z][a-z0-9_]{0,39}$')
LOGIN_RE = re.compile(r'^[a-z0-9][a-z0-9._-]{0,63}$')
RESERVED_PREFIXES = ('pgi_tmp_', 'pgi_template_', 'pgi_verify_')
DB_BACKUPS = BACKUPS + '/databases'
EXPORTS = DATA + '/exports'
LOCK_DIR = RUN_DIR + '/locks'
HEALTH_LOGIN = 'pgi_health'
HEALTH_NAME = 'Contrôle de connexion (pgi-health)'
HEALTH_SECRET = STATE_DIR + '/tryton-health.secret'
DISK_LIMIT_PCT = float(os.environ.get('PGI_DB_DISK_LIMIT_PCT', '90'))
MANUAL_KEEP = int(os.environ.get('PGI_DB_KEEP', '10'))
COPY_GRACE_S = float(os.environ.get('PGI_DB_COPY_GRACE_S', '10'))
IMPORT_MAX_BYTES = int(os.environ.get('PGI_DB_IMPORT_MAX_BYTES', str(2 << 30)))
LOGIN_TIMEOUT_S = float(os.environ.get('PGI_LOGIN_TIMEOUT_S', '120'))
# a restored database takes this many times its compressed dump (estimate for the space check);
# an uncompressed one (pgi-backup's nightly -Z0 dumps) this many: -Z6 shrinks a Tryton dump about
# 3.5 times (4.16 MB -> 1.21 MB for a fresh account_fr database of 27.5 MB), so both give about the
# same need. dump_expansion(path) picks one from the dump's header.
DUMP_EXPANSION = 10
DUMP_EXPANSION_UNCOMPRESSED = 3
# the student password alphabet: no 0/O, 1/l/I (read from a printed sheet)
PASSWORD_ALPHABET = 'abcdefghjkmnpqrstuvwxyz23456789'
# kinds of databases whose login pgi-health does not check by default (teaching copies: trytond
# would load one pool per database, each minutes of CPU under emulation and tens of MB of memory)
TEACHING_KINDS = ('copy', 'class-student', 'class-shared', 'import', 'restore')


class DbError(Exception):
    def __init__(self, code, message, status=FAILED, **details):
        super().__init__(message)
        self.code = code
        self.status = status
        self.details = details

    def as_json(self):
        return dict({'code': self.code, 'message': str(self)}, **self.details)


# ---------------------------------------------------------------------------------------------
# PostgreSQL access


def _connect(db, autocommit=False):
    import psycopg2
    c = psycopg2.connect(dbname=db, user='postgres', host=PG_HOST, port=PG_PORT, connect_timeout=10,
                         application_name='pgi-db')
    c.autocommit = autocommit
    return c


_admin = None


def admin():
    """The engine's own autocommit connection to the "postgres" database (CREATE/DROP/ALTER DATABASE)."""
    global _admin
    if _admin is None or _admin.closed:
        _admin = _connect('postgres', autocommit=True)
    return _admin


def q(sql, params=None, db=None):
    """One statement on the admin connection (or, with db, a short-lived one); rows as tuples."""
    if db is None:
        with admin().cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    with session(db) as c, c.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def session(db, role=None):
    """One transaction in `db` as postgres (SET ROLE `role`: what it creates belongs to that role),
    committed at the end, rolled back on error; the connection is closed either way (an open
    connection would block CREATE DATABASE ... TEMPLATE, RENAME and DROP on that database)."""
    c = _connect(db)
    try:
        if role:
            with c.cursor() as cur:
                cur.execute('SET ROLE %s' % quote_ident(role))
        yield c
        c.commit()
    except BaseException:
        if not c.closed:
            c.rollback()
        raise
    finally:
        c.close()


def exists(name):
    return bool(q('SELECT 1 FROM pg_database WHERE datname = %s', (name,)))


def server_version_num():
    return int(q('SHOW server_version_num')[0][0])


def user_databases():
    """Databases people use: not PostgreSQL's own, not templates, not the engine's temporary ones."""
    rows = q("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1")
    return [r[0] for r in rows if not r[0].startswith(RESERVED_PREFIXES)]


def table_exists(cur, table):
    cur.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relname = %s AND c.relkind IN ('r', 'p')", (table,))
    return cur.fetchone() is not None


def is_tryton(cur):
    return table_exists(cur, 'ir_module') and table_exists(cur, 'res_user')


def columns(cur, table):
    # pg_attribute, not information_schema.columns: ten times cheaper, which counts under emulation
    cur.execute("SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (table,))
    return [r[0] for r in cur.fetchall()]


def foreign_keys(cur, table):
    """{column: referenced table} for the single-column foreign keys of `table`."""
    cur.execute("SELECT a.attname, r.relname FROM pg_constraint c "
                "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "JOIN pg_class r ON r.oid = c.confrelid "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
                "WHERE c.contype = 'f' AND n.nspname = 'public' AND t.relname = %s AND array_length(c.conkey, 1) = 1",
                (table,))
    return dict(cur.fetchall())


_id_defaults = {}


def _id_default(cur, table):
    """The SQL expression that takes the next id of TABLE as Tryton does: trytond 6.0 makes a
    sequence TABLE_id_seq that the id column takes as its default (without OWNED BY, so
    pg_get_serial_sequence does not know it); 7.0 makes the id an identity column (GENERATED BY
    DEFAULT AS IDENTITY), whose sequence pg_get_serial_sequence gives."""
    if table not in _id_defaults:
        cur.execute("SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid "
                    "AND a.attnum = d.adnum WHERE d.adrelid = %s::regclass AND a.attname = 'id'", (quote_ident(table),))
        row = cur.fetchone()
        if row and row[0] and row[0].startswith('nextval('):
            _id_defaults[table] = row[0]
        else:
            cur.execute("SELECT pg_get_serial_sequence(%s, 'id')", (quote_ident(table),))
            seq = cur.fetchone()
            if not seq or not seq[0]:
                raise DbError('internal', 'table %s has no id sequence' % table)
            # by name, as 6.0's default is: the cache serves every database of this process
            _id_defaults[table] = "nextval('%s'::regclass)" % seq[0].replace("'", "''")
    return _id_defaults[table]


def next_id(cur, table):
    """The next id as Tryton takes it."""
    cur.execute('SELECT %s' % _id_default(cur, table))
    return cur.fetchone()[0]


def insert(cur, table, values):
    """INSERT of the given columns that the table has (Tryton series differ in their columns);
    create_uid/create_date as Tryton writes them (root: the engine acts as the administrator)."""
    cols = columns(cur, table)
    values = dict(values)
    if 'id' not in values:
        values['id'] = next_id(cur, table)
    if 'create_uid' in cols:
        values.setdefault('create_uid', 0)
    names = [c for c in values if c in cols]
    params = [values[c] for c in names]
    exprs = ['%s'] * len(names)
    if 'create_date' in cols and 'create_date' not in values:
        names.append('create_date')
        exprs.append('CURRENT_TIMESTAMP')
    cur.execute('INSERT INTO %s (%s) VALUES (%s)' % (quote_ident(table), ', '.join(quote_ident(c) for c in names), ', '.join(exprs)), params)
    return values['id']


def copy_row(cur, table, src_id, overrides):
    """Copies one row of `table` (every column, as Tryton's copy does) with `overrides`; returns
    the new id. create_* say the engine made it now, write_* are cleared."""
    cols = columns(cur, table)
    overrides = dict(overrides)
    overrides['id'] = next_id(cur, table)
    overrides.setdefault('create_uid', 0)
    overrides.setdefault('write_uid', None)
    overrides.setdefault('write_date', None)
    exprs, params = [], []
    for c in cols:
        if c == 'create_date':
            exprs.append('CURRENT_TIMESTAMP')
        elif c in overrides:
            exprs.append('%s')
            params.append(overrides[c])
        else:
            exprs.append(quote_ident(c))
    params.append(src_id)
    cur.execute('INSERT INTO %s (%s) SELECT %s FROM %s WHERE id = %%s' % (
        quote_ident(table), ', '.join(quote_ident(c) for c in cols), ', '.join(exprs), quote_ident(table)), params)
    if cur.rowcount != 1:
        raise DbError('internal', '%s %s: no such row to copy' % (table, src_id))
    return overrides['id']


def pg_tool(name):
    return os.path.join(PG_BIN, name)


def pg_args():
    return ['-h', PG_HOST, '-p', str(PG_PORT), '-U', 'postgres']


# ---------------------------------------------------------------------------------------------
# names, locks, space


def check_name(name, what='database name'):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DbError('invalid_name', '%r is not a valid %s: 1 to 63 characters among lowercase letters, digits and _, '
                      'starting with a letter (a PostgreSQL identifier that needs no quoting)' % (name, what), INVALID, name=name)
    if name.startswith(RESERVED_PREFIXES) or name in ('postgres', 'template0', 'template1'):
        raise DbError('reserved_name', '%r is reserved (names starting with %s are the engine\'s own)' % (name, ', '.join(RESERVED_PREFIXES)),
                      INVALID, name=name)
    return name


def require_database(name, tryton=True):
    if not isinstance(name, str) or not NAME_RE.match(name):
        check_name(name)
    if not exists(name):
        raise DbError('not_found', 'database %s does not exist' % name, NOT_FOUND, database=name)
    if tryton:
        with session(name) as c, c.cursor() as cur:
            if not is_tryton(cur):
                raise DbError('not_tryton', 'database %s is not a Tryton database' % name, INVALID, database=name)


def require_free(names):
    taken = [n for n in names if exists(n)]
    if taken:
        raise DbError('exists', 'database%s %s already exist%s: an existing database is never changed; choose another name'
                      % ('s' if len(taken) > 1 else '', ', '.join(taken), '' if len(taken) > 1 else 's'), EXISTS, databases=taken)


class Locks:
    """Per-database locks (flock on /run/pgi/locks/NAME.lock, released when the process ends, even
    killed). Never waits: a lock someone else holds is DbError BUSY (exit 7) naming the holder."""

    def __init__(self, op, exclusive=(), shared=()):
        self.op = op
        self.exclusive = sorted(set(exclusive))
        self.shared = sorted(set(shared) - set(exclusive))
        self.files = []

    def __enter__(self):
        os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
        try:
            for name, mode in [(n, fcntl.LOCK_EX) for n in self.exclusive] + [(n, fcntl.LOCK_SH) for n in self.shared]:
                path = os.path.join(LOCK_DIR, name + '.lock')
                f = open(path, 'a+')
                try:
                    fcntl.flock(f, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    holder = f.read().strip()
                    f.close()
                    raise DbError('busy', 'database %s is busy: another operation is using it (%s); try again when it has finished'
                                  % (name, holder or 'unknown'), BUSY, database=name, holder=holder or None)
                if mode == fcntl.LOCK_EX:
                    f.seek(0)
                    f.truncate()
                    f.write('%s, pid %d, since %s\n' % (self.op, os.getpid(), iso(now_utc())))
                    f.flush()
                self.files.append(f)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for f in self.files:
            f.close()
        self.files = []


def disk_usage():
    s = os.statvfs(DATA)
    size = s.f_blocks * s.f_frsize
    used = (s.f_blocks - s.f_bfree) * s.f_frsize
    return size, used


def check_space(needed, what):
    """Refuses (NO_SPACE) when the data disk would pass DISK_LIMIT_PCT after `needed` more bytes."""
    size, used = disk_usage()
    after = 100.0 * (used + needed) / size if size else 100.0
    if after > DISK_LIMIT_PCT:
        raise DbError('no_space', '%s needs about %s on the data disk: %s of %s are used (%.1f %%), it would be %.1f %%, above the %g %% limit. '
                      'Free space first (drop or archive databases, remove old exports) or grow the data disk'
                      % (what, human(needed), human(used), human(size), 100.0 * used / size if size else 0, after, DISK_LIMIT_PCT),
                      NO_SPACE, needed_bytes=needed, used_bytes=used, size_bytes=size, used_pct=round(100.0 * used / size, 1) if size else None,
                      after_pct=round(after, 1), limit_pct=DISK_LIMIT_PCT)


def human(n):
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if abs(n) < 1024 or unit == 'TB':
            return ('%d %s' % (n, unit)) if unit == 'B' else ('%.1f %s' % (n, unit))
        n /= 1024.0


def database_size(name):
    return int(q('SELECT pg_database_size(%s)', (name,))[0][0])


def tmp_name(tag='db'):
    """A temporary database name carrying this process's id (cleanup_stale)."""
    return 'pgi_tmp_%s_%d_%s' % (tag, os.getpid(), secrets.token_hex(4))


def cleanup_stale():
    """Drops the temporary databases of pgi-db runs that died before they could (killed, power cut):
    those whose process no longer exists. Run before each operation that makes databases."""
    for (name,) in q("SELECT datname FROM pg_database WHERE datname LIKE 'pgi\\_tmp\\_%' OR datname LIKE 'pgi\\_verify\\_%'"):
        m = re.match(r'^pgi_(?:tmp|verify)_(?:[a-z]+_)?(\d+)_[0-9a-f]+$', name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        log('pgi-db: dropping %s, left by a run that died' % name)
        drop_quietly(name)


def drop_quietly(name):
    """Drops an engine-made database after a failure (never a user's: only names it made)."""
    try:
        q('ALTER DATABASE %s IS_TEMPLATE false' % quote_ident(name)) if exists(name) else None
        q('DROP DATABASE IF EXISTS %s%s' % (quote_ident(name), ' WITH (FORCE)' if server_version_num() >= 130000 else ''))
    except Exception as e:
        log('pgi-db: could not drop %s after a failure: %s' % (name, e))


# ---------------------------------------------------------------------------------------------
# Tryton versions


def tryton_version():
    """The installed trytond's version, e.g. "6.0.29" (from its package, without importing it)."""
    import importlib.util
    spec = importlib.util.find_spec('trytond')
    if spec is None or not spec.origin:
        return None
    with open(spec.origin) as f:
        m = re.search(r'^__version__\s*=\s*["\']([^"\']+)', f.read(), re.M)
    return m.group(1) if m else None


def series_of(version):
    m = re.match(r'^(\d+)\.(\d+)', version or '')
    return '%s.%s' % (m.group(1), m.group(2)) if m else None


def tryton_series():
    return series_of(tryton_version())


# ---------------------------------------------------------------------------------------------
# pgi_meta: what the engine records inside each database it makes (travels with its dumps)

META_DDL = 'CREATE TABLE IF NOT EXISTS pgi_meta (key varchar PRIMARY KEY, value varchar NOT NULL)'


def meta_set(cur, **values):
    cur.execute(META_DDL)
    for k, v in values.items():
        if v is None:
            cur.execute('DELETE FROM pgi_meta WHERE key = %s', (k,))
        else:
            cur.execute('INSERT INTO pgi_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value',
                        (k, v if isinstance(v, str) else json.dumps(v)))


def meta_get(cur):
    if not table_exists(cur, 'pgi_meta'):
        return None
    cur.execute('SELECT key, value FROM pgi_meta')
    return dict(cur.fetchall())


def stamp_series(name):
    """Records the Tryton series serving `name` in it (pgi_meta.tryton_series), so that its dumps
    say which series they come from; written only when it changed."""
    series, version = tryton_series(), tryton_version()
    with session(name, role='tryton') as c, c.cursor() as cur:
        m = meta_get(cur) or {}
        if m.get('tryton_series') != series or m.get('tryton_version') != version:
            meta_set(cur, tryton_series=series, tryton_version=version)


# ---------------------------------------------------------------------------------------------
# Tryton data, by SQL


def neutralise(cur):
    """Teaching copies do nothing on their own: scheduled actions (ir.cron) off. Mail: Tryton 6.0/7.0
    have no per-database mail settings (trytond.conf's [email] uri only; the image has no mail server)."""
    n = 0
    if table_exists(cur, 'ir_cron'):
        cur.execute('UPDATE ir_cron SET active = false WHERE active')
        n = cur.rowcount
    meta_set(cur, neutralised=json.dumps({'cron_disabled': n, 'at': iso(now_utc())}))
    return n


def bump_caches(cur, names=None):
    """Tells a running trytond that what it cached about this database is stale: its caches compare
    ir_cache timestamps (at most every [cache] clean_timeout, 5 min by default) and drop what is older.
    The template holds one row per cache (template-setup)."""
    if not table_exists(cur, 'ir_cache'):
        return
    if names is None:
        cur.execute('UPDATE ir_cache SET timestamp = CURRENT_TIMESTAMP')
        return
    for name in names:
        cur.execute('UPDATE ir_cache SET timestamp = CURRENT_TIMESTAMP WHERE name = %s', (name,))
        if cur.rowcount == 0:
            insert(cur, 'ir_cache', {'name': name, 'timestamp': None})
            cur.execute('UPDATE ir_cache SET timestamp = CURRENT_TIMESTAMP WHERE name = %s', (name,))


def set_admin_hash(cur):
    """The administrator's password chosen with pgi-configure (kept hashed on the data disk)."""
    try:
        with open(TRYTON_ADMIN_HASH) as f:
            h = f.read().strip()
    except FileNotFoundError:
        return False
    cur.execute("UPDATE res_user SET password_hash = %s, password_reset = NULL WHERE login = 'admin'", (h,))
    return cur.rowcount > 0


def admin_hash_required():
    if not os.path.exists(TRYTON_ADMIN_HASH):
        raise DbError('not_configured', 'no Tryton admin password yet: run pgi-configure with tryton_admin first', INVALID)


def companies(cur):
    if not table_exists(cur, 'company_company'):
        return []
    cur.execute('SELECT c.id, c.party, p.name FROM company_company c JOIN party_party p ON p.id = c.party ORDER BY c.id')
    return cur.fetchall()


def rename_company(cur, name):
    comps = companies(cur)
    if len(comps) != 1:
        raise DbError('company', 'the database has %d companies: the company can only be renamed when there is exactly one' % len(comps), INVALID)
    cur.execute('UPDATE party_party SET name = %s, write_uid = 0, write_date = CURRENT_TIMESTAMP WHERE id = %s', (name, comps[0][1]))
    return comps[0][0]


def check_company_name(name):
    if name is None:
        return None
    name = name.strip()
    if not name or len(name) > 120 or any(unicodedata.category(ch).startswith('C') for ch in name):
        raise DbError('invalid_company', 'company name %r: 1 to 120 printable characters' % name, INVALID)
    return name


def password_hash(password):
    """A hash Tryton's res.user accepts: passlib's pbkdf2_sha512 (Tryton's CryptContext lists it in
    6.0 and 7.0, whatever else is installed; bcrypt, its first choice when python3-bcrypt is there,
    costs ~15 times more and every login pays it, which is seconds under software emulation). When
    trytond.conf names a passlib context file ([password] passlib), that context hashes instead."""
    path = trytond_option('password', 'passlib')
    if path:
        from passlib.context import CryptContext
        return CryptContext.from_path(path).hash(password)
    return tryton_password_hash(password)


# Rounds of the hashes of the passwords the engine generates (students', teachers' in a class):
# 5,000 instead of passlib's 25,000 for pbkdf2_sha512. Those passwords are random (10 or 12
# characters from a 31-letter alphabet, 49 to 59 bits), not chosen by a person: rounds slow down
# guessing of weak passwords, and guessing these stays out of reach at 5,000 (2^49 candidates
# at 10,000 HMAC-SHA512 each). 25,000 rounds cost 0.45 s of the VM's only CPU per student under
# software emulation (13 s of a class of 30), 5,000 rounds 0.1 s. Tryton verifies any pbkdf2_sha512
# hash whatever its rounds and does not rehash it (its CryptContext sets no minimum); a password a
# person sets later in Tryton gets Tryton's own hash.
GENERATED_PASSWORD_ROUNDS = 5000


def generated_password_hash(password):
    """password_hash for a password gen_password made (see GENERATED_PASSWORD_ROUNDS)."""
    if trytond_option('password', 'passlib'):
        return password_hash(password)
    from passlib.hash import pbkdf2_sha512
    return pbkdf2_sha512.using(rounds=GENERATED_PASSWORD_ROUNDS).hash(password)


def trytond_option(section, option):
    import configparser
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read(TRYTOND_CONF)
    except (OSError, configparser.Error):
        return None
    return cp.get(section, option, fallback=None) or None


def gen_password(length=10):
    return ''.join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


class UserFactory:
    """Tryton users written as res.user's create does: the res_user row (active, menu, language,
    company, company filter as for the administrator), its groups (res_user-res_group) and companies
    (res_user-company_company). Kinds: "teacher" (every group of the administrator), "student"
    (the same but Administration: no user or access management), "health" (no group at all).

    What it reads from a database (columns, the administrator, groups) also holds for every copy of
    that database: a class reads it once in its staging copy and writes each student's user in one
    statement (pass the copy's cursor to create)."""

    def __init__(self, cur):
        self.cur = cur
        cur.execute("SELECT * FROM res_user WHERE login = 'admin'")
        row = cur.fetchone()
        self.admin = dict(zip([d[0] for d in cur.description], row)) if row else None
        self.user_cols = columns(cur, 'res_user')
        admin_id = self.admin['id'] if self.admin else None
        cur.execute('SELECT "group" FROM "res_user-res_group" WHERE "user" = %s ORDER BY "group"', (admin_id,))
        self.admin_groups = [r[0] for r in cur.fetchall()]
        if not self.admin_groups:
            cur.execute('SELECT id FROM res_group ORDER BY id')
            self.admin_groups = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT db_id FROM ir_model_data WHERE module = 'res' AND fs_id = 'group_admin' AND model = 'res.group'")
        self.admin_group = {r[0] for r in cur.fetchall()}
        self.has_companies = table_exists(cur, 'res_user-company_company')
        self.companies = []
        if self.has_companies:
            cur.execute('SELECT company FROM "res_user-company_company" WHERE "user" = %s ORDER BY company', (admin_id,))
            self.companies = [r[0] for r in cur.fetchall()]
            if not self.companies:
                self.companies = [c[0] for c in companies(cur)]
        self.menu = self.admin.get('menu') if self.admin else None
        if self.menu is None:
            cur.execute("SELECT id FROM ir_action WHERE usage = 'menu' ORDER BY id LIMIT 1")
            r = cur.fetchone()
            self.menu = r[0] if r else None
        self.defaults = {}
        if self.admin:
            for col in ('language', 'company_filter', 'warehouse'):
                if col in self.user_cols and self.admin.get(col) is not None:
                    self.defaults[col] = self.admin[col]
        if 'company' in self.user_cols and self.companies:
            self.defaults['company'] = (self.admin or {}).get('company') or self.companies[0]
        self.link_cols = {t: columns(cur, t) for t in ('res_user-res_group', 'res_user-company_company') if table_exists(cur, t)}
        self.ids = {t: _id_default(cur, t) for t in ['res_user'] + list(self.link_cols)}

    def find(self, login, cur=None):
        cur = cur or self.cur
        cur.execute('SELECT id FROM res_user WHERE login = %s', (login,))
        r = cur.fetchone()
        return r[0] if r else None

    def groups(self, kind):
        if kind == 'teacher':
            return list(self.admin_groups)
        if kind == 'student':
            return [g for g in self.admin_groups if g not in self.admin_group]
        return []

    def create(self, login, name, hash_, kind, cur=None):
        """One statement: the user, its groups and companies (ids from Tryton's own sequences)."""
        cur = cur or self.cur
        values = dict(self.defaults, login=login, name=name, password_hash=hash_, active=True, menu=self.menu)
        cols = [c for c in values if c in self.user_cols]
        stamp = [c for c in ('create_uid', 'create_date') if c in self.user_cols]
        sql = 'WITH u AS (INSERT INTO res_user (id, %s) VALUES (%s, %s) RETURNING id)' % (
            ', '.join(quote_ident(c) for c in cols + stamp), self.ids['res_user'],
            ', '.join(['%s'] * len(cols) + [{'create_uid': '0', 'create_date': 'CURRENT_TIMESTAMP'}[c] for c in stamp]))
        params = [values[c] for c in cols]
        links = []
        if kind != 'health':
            links.append(('res_user-res_group', 'group', self.groups(kind)))
            if self.has_companies:
                links.append(('res_user-company_company', 'company', self.companies))
        for n, (table, col, targets) in enumerate(links):
            if not targets or table not in self.link_cols:
                continue
            lstamp = [c for c in ('create_uid', 'create_date') if c in self.link_cols[table]]
            sql += ', l%d AS (INSERT INTO %s (id, "user", %s%s) SELECT %s, u.id, x%s FROM u, unnest(%%s::int[]) x)' % (
                n, quote_ident(table), quote_ident(col), ''.join(', ' + quote_ident(c) for c in lstamp), self.ids[table],
                ''.join({'create_uid': ', 0', 'create_date': ', CURRENT_TIMESTAMP'}[c] for c in lstamp))
            params.append(list(targets))
        cur.execute(sql + ' SELECT id FROM u', params)
        return cur.fetchone()[0]


def health_login():
    """(secret, hash) of the login-check user (pgi_health), the same in every database (copies
    carry its hash): a random password and its hash, kept root-only on the data disk
    (tryton-health.secret, one JSON object), never printed. The hash is kept so that checking a
    database's copy is a string comparison, not a pbkdf2 computation (a second under emulation)."""
    try:
        with open(HEALTH_SECRET) as f:
            d = json.load(f)
        if isinstance(d, dict) and d.get('password') and d.get('hash'):
            return d['password'], d['hash']
    except (FileNotFoundError, ValueError):
        pass
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    pw = secrets.token_urlsafe(32)
    d = {'login': HEALTH_LOGIN, 'password': pw, 'hash': password_hash(pw)}
    fd = os.open(HEALTH_SECRET + '.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        json.dump(d, f)
        f.write('\n')
    os.replace(HEALTH_SECRET + '.tmp', HEALTH_SECRET)
    return pw, d['hash']


def ensure_health_user(cur):
    """The user pgi-health logs in as (no group: it can open a session and nothing else).
    Returns "ok", "created" or "repaired" (then trytond is told to drop its cached logins)."""
    secret, hash_ = health_login()
    cur.execute('SELECT id, password_hash, active FROM res_user WHERE login = %s', (HEALTH_LOGIN,))
    row = cur.fetchone()
    if row and row[2] and row[1] == hash_:
        return 'ok'
    if row and row[2] and row[1]:
        # another hash of the same password (made before the hash was kept) is as good
        from passlib.context import CryptContext
        try:
            if CryptContext(schemes=['pbkdf2_sha512', 'bcrypt', 'argon2', 'scrypt']).verify(secret, row[1]):
                return 'ok'
        except (ValueError, TypeError):
            pass
    if row:
        cur.execute('UPDATE res_user SET password_hash = %s, active = true, password_reset = NULL, write_uid = 0, '
                    'write_date = CURRENT_TIMESTAMP WHERE id = %s', (hash_, row[0]))
        bump_caches(cur, ['res_user._get_login'])
        return 'repaired'
    UserFactory(cur).create(HEALTH_LOGIN, HEALTH_NAME, hash_, 'health')
    return 'created'


# ---------------------------------------------------------------------------------------------
# fiscal years (account.fiscalyear, its periods, its sequences), by SQL

YEAR_RE = re.compile(r'(?<!\d)(\d{4})(?!\d)')


def shift_date(d, years):
    """The same day `years` later; a month's last day stays its last day (28/29 February)."""
    import calendar
    y = d.year + years
    last = calendar.monthrange(d.year, d.month)[1]
    new_last = calendar.monthrange(y, d.month)[1]
    return d.replace(year=y, day=new_last if d.day == last else min(d.day, new_last))


def shift_text(text, first, last, years):
    """Every year between first and last written in `text` ("2025", "FC2025-", "2025-01") moved by `years`."""
    if not text:
        return text
    return YEAR_RE.sub(lambda m: str(int(m.group(1)) + years) if first <= int(m.group(1)) <= last else m.group(1), text)


def ensure_fiscal_year(cur, year, shift_allowed=False):
    """A fiscal year starting in `year` for every company that has fiscal years, made as Tryton's
    "renew fiscal year" wizard makes one (account.fiscalyear.renew, reset sequences): a copy of the
    nearest existing fiscal year with its dates moved, the same periods, and fresh sequences
    (move posting: ir.sequence and its PostgreSQL sequence; invoices: account.fiscalyear.invoice_sequence
    and its ir.sequence.strict). With shift_allowed (a database just made from the template), an
    unused only fiscal year (no move) is moved instead, so the database holds only the year asked for.
    Returns one {"company", "fiscal_year", "action"} per company."""
    out = []
    if not table_exists(cur, 'account_fiscalyear'):
        return out
    for company_id, _, _ in companies(cur):
        cur.execute('SELECT id, name, start_date, end_date FROM account_fiscalyear WHERE company = %s ORDER BY start_date', (company_id,))
        fys = cur.fetchall()
        if not fys:
            out.append({'company': company_id, 'fiscal_year': None, 'action': 'none', 'detail': 'no fiscal year to start from'})
            continue
        same = [f for f in fys if f[2].year == year]
        if same:
            out.append({'company': company_id, 'fiscal_year': same[0][1], 'action': 'existing'})
            continue
        model = min(fys, key=lambda f: (abs(f[2].year - year), -f[2].year))
        fy_id, fy_name, start, end = model
        years = year - start.year
        new_start, new_end = shift_date(start, years), shift_date(end, years)
        cur.execute('SELECT count(*) FROM account_move m JOIN account_period p ON p.id = m.period WHERE p.fiscalyear = %s', (fy_id,))
        moves = cur.fetchone()[0]
        if shift_allowed and len(fys) == 1 and moves == 0:
            _shift_fiscal_year(cur, fy_id, start.year, end.year, years)
            action = 'moved'
        else:
            cur.execute('SELECT name FROM account_fiscalyear WHERE company = %s AND start_date <= %s AND end_date >= %s',
                        (company_id, new_end, new_start))
            clash = cur.fetchone()
            if clash:
                raise DbError('fiscal_year_overlap', 'a fiscal year from %s to %s would overlap the existing fiscal year %s'
                              % (new_start, new_end, clash[0]), INVALID)
            _copy_fiscal_year(cur, fy_id, start.year, end.year, years)
            action = 'created'
        out.append({'company': company_id, 'fiscal_year': shift_text(fy_name, start.year, end.year, years), 'action': action,
                    'start': new_start.isoformat(), 'end': new_end.isoformat(), 'from': fy_name})
    return out


def _sequence_columns(cur, table):
    """Columns of `table` that point at ir.sequence / ir.sequence.strict rows."""
    return {c: t for c, t in foreign_keys(cur, table).items() if t in ('ir_sequence', 'ir_sequence_strict')}


def _translations(cur, model, old_id, new_id, first, last, years):
    """Copies (new_id) or moves (new_id None) the translations of a record's translatable fields."""
    if not table_exists(cur, 'ir_translation'):
        return
    cur.execute("SELECT id, value FROM ir_translation WHERE type = 'model' AND name LIKE %s AND res_id = %s", (model + ',%', old_id))
    for tid, value in cur.fetchall():
        if new_id is None:
            cur.execute('UPDATE ir_translation SET value = %s WHERE id = %s', (shift_text(value, first, last, years), tid))
        else:
            copy_row(cur, 'ir_translation', tid, {'res_id': new_id, 'value': shift_text(value, first, last, years)})


def _fiscal_year_sequences(cur, fy_id):
    """[(table, id)] of the sequences a fiscal year uses (itself, its periods, its invoice sequences)."""
    found = []
    for table, where in (('account_fiscalyear', 'id = %s'), ('account_period', 'fiscalyear = %s'),
                         ('account_fiscalyear_invoice_sequence', 'fiscalyear = %s')):
        if not table_exists(cur, table):
            continue
        for col, target in _sequence_columns(cur, table).items():
            cur.execute('SELECT DISTINCT %s FROM %s WHERE %s AND %s IS NOT NULL' % (quote_ident(col), quote_ident(table), where, quote_ident(col)), (fy_id,))
            found += [(target, r[0]) for r in cur.fetchall() if (target, r[0]) not in found]
    return found


def _shift_fiscal_year(cur, fy_id, first, last, years):
    cur.execute('SELECT name, start_date, end_date FROM account_fiscalyear WHERE id = %s', (fy_id,))
    name, start, end = cur.fetchone()
    cur.execute('UPDATE account_fiscalyear SET name = %s, start_date = %s, end_date = %s, write_uid = 0, write_date = CURRENT_TIMESTAMP WHERE id = %s',
                (shift_text(name, first, last, years), shift_date(start, years), shift_date(end, years), fy_id))
    cur.execute('SELECT id, name, start_date, end_date FROM account_period WHERE fiscalyear = %s', (fy_id,))
    for pid, pname, pstart, pend in cur.fetchall():
        cur.execute('UPDATE account_period SET name = %s, start_date = %s, end_date = %s, write_uid = 0, write_date = CURRENT_TIMESTAMP WHERE id = %s',
                    (shift_text(pname, first, last, years), shift_date(pstart, years), shift_date(pend, years), pid))
    for table, sid in _fiscal_year_sequences(cur, fy_id):
        cur.execute('SELECT name, prefix, suffix FROM %s WHERE id = %%s' % quote_ident(table), (sid,))
        sname, prefix, suffix = cur.fetchone()
        cur.execute('UPDATE %s SET name = %%s, prefix = %%s, suffix = %%s, write_uid = 0, write_date = CURRENT_TIMESTAMP WHERE id = %%s' % quote_ident(table),
                    (shift_text(sname, first, last, years), shift_text(prefix, first, last, years), shift_text(suffix, first, last, years), sid))
        _translations(cur, 'ir.sequence' if table == 'ir_sequence' else 'ir.sequence.strict', sid, None, first, last, years)


def _copy_sequence(cur, table, sid, first, last, years):
    cur.execute('SELECT name, prefix, suffix, type, number_increment FROM %s WHERE id = %%s' % quote_ident(table), (sid,))
    name, prefix, suffix, kind, increment = cur.fetchone()
    new = copy_row(cur, table, sid, {'name': shift_text(name, first, last, years), 'prefix': shift_text(prefix, first, last, years),
                                     'suffix': shift_text(suffix, first, last, years), 'number_next_internal': 1})
    if table == 'ir_sequence' and kind == 'incremental':
        # what ir.sequence's create does on PostgreSQL: its numbers come from a database sequence
        cur.execute('CREATE SEQUENCE %s INCREMENT BY %d START WITH 1' % (quote_ident('ir_sequence_%d' % new), int(increment or 1)))
    _translations(cur, 'ir.sequence' if table == 'ir_sequence' else 'ir.sequence.strict', sid, new, first, last, years)
    return new


def _copy_fiscal_year(cur, fy_id, first, last, years):
    seq_map = {}

    def seq(table, sid):
        if sid is None:
            return None
        if (table, sid) not in seq_map:
            seq_map[table, sid] = _copy_sequence(cur, table, sid, first, last, years)
        return seq_map[table, sid]

    cur.execute('SELECT name, start_date, end_date FROM account_fiscalyear WHERE id = %s', (fy_id,))
    name, start, end = cur.fetchone()
    over = {'name': shift_text(name, first, last, years), 'start_date': shift_date(start, years), 'end_date': shift_date(end, years), 'state': 'open'}
    for col, target in _sequence_columns(cur, 'account_fiscalyear').items():
        cur.execute('SELECT %s FROM account_fiscalyear WHERE id = %%s' % quote_ident(col), (fy_id,))
        over[col] = seq(target, cur.fetchone()[0])
    new_fy = copy_row(cur, 'account_fiscalyear', fy_id, over)
    period_map = {}
    period_seqs = _sequence_columns(cur, 'account_period')
    cur.execute('SELECT id, name, start_date, end_date FROM account_period WHERE fiscalyear = %s ORDER BY start_date, id', (fy_id,))
    for pid, pname, pstart, pend in cur.fetchall():
        over = {'name': shift_text(pname, first, last, years), 'start_date': shift_date(pstart, years), 'end_date': shift_date(pend, years),
                'fiscalyear': new_fy, 'state': 'open'}
        for col, target in period_seqs.items():
            cur.execute('SELECT %s FROM account_period WHERE id = %%s' % quote_ident(col), (pid,))
            over[col] = seq(target, cur.fetchone()[0])
        period_map[pid] = copy_row(cur, 'account_period', pid, over)
    if table_exists(cur, 'account_fiscalyear_invoice_sequence'):
        inv_seqs = _sequence_columns(cur, 'account_fiscalyear_invoice_sequence')
        cur.execute('SELECT id, period FROM account_fiscalyear_invoice_sequence WHERE fiscalyear = %s ORDER BY id', (fy_id,))
        for iid, period in cur.fetchall():
            over = {'fiscalyear': new_fy, 'period': period_map.get(period)}
            for col, target in inv_seqs.items():
                cur.execute('SELECT %s FROM account_fiscalyear_invoice_sequence WHERE id = %%s' % quote_ident(col), (iid,))
                over[col] = seq(target, cur.fetchone()[0])
            copy_row(cur, 'account_fiscalyear_invoice_sequence', iid, over)
    return new_fy


def check_year(year):
    if year is None:
        return datetime.date.today().year
    try:
        y = int(year)
    except (TypeError, ValueError):
        y = None
    if y is None or not 1990 <= y <= 2100:
        raise DbError('invalid_year', 'fiscal year %r: a year between 1990 and 2100' % (year,), INVALID)
    return y


# ---------------------------------------------------------------------------------------------
# making databases: template, copies, restores


def template_paths(template='bts'):
    if not re.match(r'^[a-z][a-z0-9_]{0,30}$', template or ''):
        raise DbError('invalid_template', 'template %r: a template name like "bts"' % template, INVALID)
    return os.path.join(TEMPLATES_DIR, template + '.dump'), os.path.join(TEMPLATES_DIR, template + '.modules')


def template_modules(template='bts'):
    try:
        with open(template_paths(template)[1]) as f:
            return sorted(line.strip() for line in f if line.strip())
    except FileNotFoundError:
        return None


def ensure_template(template='bts', build_epoch=None):
    """The image's template restored into the cluster as a template database (pgi_template_NAME,
    not connectable, not listed by trytond, not backed up): each database made from it is then a
    copy (CREATE DATABASE ... TEMPLATE), seconds under emulation, instead of a restore (a minute
    and a half). The image build puts it in the cluster the first boot copies to the data disk
    (seed-cluster, build_epoch: deterministic, restored in place by one pg_restore job); on a data
    disk made by an older image, or when a new image brings another dump (its sha256 is kept as the
    database's comment), the first operation that needs it restores it."""
    dump, _ = template_paths(template)
    if not os.path.exists(dump):
        raise DbError('no_template', 'template %s is not in this image (%s is missing)' % (template, dump), NOT_FOUND)
    name = 'pgi_template_' + template
    digest = sha256_file(dump)
    comment = json.dumps({'dump_sha256': digest, 'template': template}, sort_keys=True)

    def current():
        r = q("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,))
        try:
            return bool(r) and json.loads(r[0][0] or '{}').get('dump_sha256') == digest
        except ValueError:
            return False

    def prepare(db, created_at):
        with session(db, role='tryton') as c, c.cursor() as cur:
            meta_set(cur, kind='template', template=template, dump_sha256=digest, tryton_series=tryton_series(),
                     tryton_version=tryton_version(), created_at=created_at)

    def seal():
        q('ALTER DATABASE %s IS_TEMPLATE true ALLOW_CONNECTIONS false' % quote_ident(name))
        q('COMMENT ON DATABASE %s IS %%s' % quote_ident(name), (comment,))

    if build_epoch is not None:
        restore_into(name, dump, jobs=1)
        prepare(name, iso(datetime.datetime.fromtimestamp(int(build_epoch), datetime.timezone.utc)))
        seal()
        return name
    if current():
        return name
    # one builder at a time; the others wait for it
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    with open(os.path.join(LOCK_DIR, name + '.lock'), 'a+') as lf:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DbError('busy', 'the template database %s is being rebuilt by another operation' % name, BUSY)
                time.sleep(0.5)
        if current():
            return name
        tmp = tmp_name('tpl')
        try:
            restore_into(tmp, dump)
            prepare(tmp, iso(now_utc()))
            if exists(name):
                q('ALTER DATABASE %s IS_TEMPLATE false' % quote_ident(name))
                q('DROP DATABASE %s' % quote_ident(name))
            q('ALTER DATABASE %s RENAME TO %s' % (quote_ident(tmp), quote_ident(name)))
        except BaseException:
            drop_quietly(tmp)
            raise
        seal()
    return name


def create_database_sql(dst, src):
    """CREATE DATABASE dst as a copy of src, with STRATEGY = FILE_COPY on PostgreSQL 15 and later
    (15 and 17: the image's two lines; before 15 it was the only way).

    Why FILE_COPY, not WAL_LOG (15's default): a Tryton database is ~1,500 small files (265
    tables, 774 indexes, 165 TOAST tables, 219 sequences, their free-space and visibility maps)
    for 26 MB. WAL_LOG reads every page of the template through shared buffers, writes each one
    into the WAL as a full-page image and leaves the copy as dirty buffers: the next checkpoint
    writes the 26 MB again and fsyncs each file, so every copy is paid twice, partly later (a
    class of 30 leaves ~800 MB for the checkpointer). FILE_COPY copies the files directly and
    fsyncs them once. Measured in the image's VM under software emulation (1 vCPU, PostgreSQL 15,
    fsync on): WAL_LOG 3.3 s a copy + 1.5 s of checkpoint a copy, FILE_COPY 2.6 s a copy with its
    checkpoints (docs/performance.md, db-class).

    What it means for checkpoints: each FILE_COPY asks for two immediate checkpoints, one before
    (the template's dirty pages reach its files before they are copied) and one after (a crash
    never has to replay the copy: only a WAL record naming it was written). With a template
    nobody writes to (the engine copies a hidden, idle staging copy or a model that no Tryton
    session holds: see clone) the first finds little to write; copies side by side wait on each
    other's checkpoints, which is why a class makes at most one copy per CPU and two at most
    (copies_at_once). A checkpoint also ends the WAL's full-page-image cycle: the first write to
    each page after it logs a full page, a small cost on the next Tryton requests."""
    strategy = ' STRATEGY = FILE_COPY' if server_version_num() >= 150000 else ''
    return 'CREATE DATABASE %s OWNER tryton TEMPLATE %s%s' % (quote_ident(dst), quote_ident(src), strategy)


CLOSED_NOTICE = ('%d idle Tryton connection(s) to %s closed for the copy, then released in trytond (see release_trytond): '
                 'whoever uses %s in Tryton right now carries on')


def clone(src, dst, grace_s=None, close=True):
    """dst as a copy of src. CREATE DATABASE ... TEMPLATE needs src without any other session, and
    trytond keeps a pool of connections to each database it served (until it has been unused for
    30 minutes). Decision (as Odoo's database manager does for a duplicate):
    - trytond's idle connections to src (role tryton, no transaction in progress) are closed, then
      released in trytond by the engine's own logins (release_trytond): no user's request meets a
      dead connection — said in the result ("notice");
    - sessions in a transaction (someone saving in Tryton right now) are waited for, up to grace_s
      (10 s), then closed the same way once idle;
    - other sessions (psql, a running pg_dump) are never closed: after the grace, and whenever
      close is False, the copy is made with pg_dump | pg_restore instead (a consistent snapshot that
      disturbs no one; about 5 times slower).
    Returns {"method": "template"|"dump-restore", "closed_connections": N[, "notice"]}."""
    import psycopg2
    grace_s = COPY_GRACE_S if grace_s is None else grace_s
    deadline = time.monotonic() + grace_s
    closed = 0

    def result(method, **kw):
        out = dict({'method': method, 'closed_connections': closed}, **kw)
        if closed:
            release_trytond(src, closed)
            out['notice'] = CLOSED_NOTICE % (closed, src, src)
        return out

    while True:
        others = q("SELECT pid, usename, state FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (src,))
        if not others:
            try:
                q(create_database_sql(dst, src))
                hide(dst)
                return result('template')
            except psycopg2.errors.ObjectInUse:
                continue  # someone connected between the check and the copy
        idle = [pid for pid, user, state in others if user == 'tryton' and state == 'idle'] if close else []
        for pid in idle:
            if q('SELECT pg_terminate_backend(%s)', (pid,))[0][0]:
                closed += 1
        if idle and len(idle) == len(others):
            time.sleep(0.05)
            continue
        if not close or time.monotonic() > deadline:
            busy = [(u, s) for _, u, s in others if not (close and u == 'tryton' and s == 'idle')]
            log('pgi-db: %s is in use (%s): copying it with pg_dump | pg_restore' % (src, ', '.join('%s/%s' % b for b in busy)))
            copy_by_dump(src, dst)
            return result('dump-restore', detail='%d session(s) on %s%s: copied from a pg_dump snapshot'
                          % (len(busy), src, '' if close else ' (connections left open on request)'))
        time.sleep(0.2)


def copy_by_dump(src, dst):
    q("CREATE DATABASE %s OWNER tryton ENCODING 'UTF8' TEMPLATE template0" % quote_ident(dst))
    hide(dst)
    dump = subprocess.Popen([pg_tool('pg_dump'), '-Fc', '-Z', '0'] + pg_args() + [src], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rest = subprocess.run([pg_tool('pg_restore'), '--exit-on-error', '--no-owner', '--no-privileges', '--role=tryton'] + pg_args() + ['-d', dst],
                          stdin=dump.stdout, capture_output=True, text=True)
    dump.stdout.close()
    derr = dump.stderr.read().decode(errors='replace')
    if dump.wait() != 0 or rest.returncode != 0:
        raise DbError('copy_failed', 'copy of %s by pg_dump | pg_restore failed: %s' % (src, (derr or rest.stderr).strip()[-500:]))


def restore_into(name, dump, jobs=2):
    """A new database `name` (owner tryton, hidden: see hide) from a pg_dump custom-format archive."""
    q("CREATE DATABASE %s OWNER tryton ENCODING 'UTF8' TEMPLATE template0" % quote_ident(name))
    hide(name)
    r = run([pg_tool('pg_restore'), '--exit-on-error', '--no-owner', '--no-privileges', '--role=tryton', '-j', str(jobs)]
            + pg_args() + ['-d', name, dump], check=False)
    if r.returncode != 0:
        raise DbError('restore_failed', 'pg_restore of %s failed: %s' % (os.path.basename(dump), (r.stderr or r.stdout).strip()[-500:]))


def hide(name, cur=None):
    """A database being made is marked as a template while it is: trytond's database list (which
    connects to every other database) and pgi-backup leave it alone, so nothing holds a connection
    to it when it is copied or renamed."""
    sql = 'ALTER DATABASE %s IS_TEMPLATE true' % quote_ident(name)
    cur.execute(sql) if cur is not None else q(sql)


def finish(tmp, name, summary=None, cur=None):
    """The temporary database becomes `name`: renamed (still hidden), labelled, then shown."""
    ex = cur.execute if cur is not None else q
    ex('ALTER DATABASE %s RENAME TO %s' % (quote_ident(tmp), quote_ident(name)))
    if summary is not None:
        ex('COMMENT ON DATABASE %s IS %%s' % quote_ident(name), (json.dumps({'pgi': summary}, sort_keys=True),))
    ex('ALTER DATABASE %s IS_TEMPLATE false' % quote_ident(name))
    if os.path.exists(TRYTOND_CLOSED):
        release_trytond(name)


def summary_of(meta):
    """What lists and pgi-health need to know about a database without connecting to it, from its
    pgi_meta: kept as the database's comment (a shared catalog: one query reads them all). pgi_meta
    stays the reference (it travels with dumps)."""
    meta = meta or {}
    kind = meta.get('kind')
    lc = meta.get('login_check')
    return {'kind': kind, 'class': meta.get('class_label'), 'student': meta.get('student'),
            'login_check': lc == 'true' or (lc is None and kind not in TEACHING_KINDS)}


def summaries():
    """{database: summary or None} from the databases' comments (see summary_of)."""
    out = {}
    for name, comment in q("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE NOT datistemplate AND datname <> 'postgres'"):
        if name.startswith(RESERVED_PREFIXES):
            continue
        try:
            d = json.loads(comment) if comment else None
        except ValueError:
            d = None
        out[name] = d.get('pgi') if isinstance(d, dict) and isinstance(d.get('pgi'), dict) else None
    return out


def modules_of(name):
    with session(name) as c, c.cursor() as cur:
        if not table_exists(cur, 'ir_module'):
            return []
        cur.execute("SELECT name FROM ir_module WHERE state = 'activated' ORDER BY name")
        return [r[0] for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------
# create, copy


def create(name, company=None, fiscal_year=None, source=None, template='bts', lang='fr', modules=(), bare=False, login_check=True,
           close=True):
    """A new database: from the image's template (a copy of its cluster template database) or from
    database `source`, with the company renamed (party name) and a fiscal year for `fiscal_year`
    (default: the current calendar year). --bare, another language or modules the template lacks:
    initialised by trytond-admin instead (minutes)."""
    check_name(name)
    company = check_company_name(company)
    year = check_year(fiscal_year)
    admin_hash_required()
    held = template_modules(template) if source is None else None
    use_admin = source is None and (bare or lang != 'fr' or held is None or not set(modules) <= set(held))
    if source is not None:
        require_database(source)
    require_free([name])
    cleanup_stale()
    with Locks('create %s' % name, exclusive=[name], shared=[source] if source else []):
        tmp = tmp_name('new')
        started = time.monotonic()
        try:
            if use_admin:
                check_space(64 << 20, 'creating %s' % name)
                _init_with_trytond_admin(tmp, lang, list(modules) if modules or bare else sorted(held or []))
                how = {'method': 'trytond-admin'}
                origin = 'trytond-admin'
            elif source is not None:
                check_space(database_size(source), 'copying %s' % source)
                how = clone(source, tmp, close=close)
                origin = source
            else:
                tpl = ensure_template(template)
                check_space(database_size(tpl), 'creating %s' % name)
                how = clone(tpl, tmp)
                origin = 'template'
            with session(tmp, role='tryton') as c, c.cursor() as cur:
                set_admin_hash(cur)
                if company:
                    rename_company(cur, company)
                years = ensure_fiscal_year(cur, year, shift_allowed=origin == 'template')
                if source is not None:
                    neutralise(cur)
                ensure_health_user(cur)
                meta_set(cur, kind='create' if source is None else 'copy', created_at=iso(now_utc()), source=origin, class_label=None,
                         login_check='true' if login_check else 'false', tryton_series=tryton_series(), tryton_version=tryton_version())
                summary = summary_of(meta_get(cur))
            finish(tmp, name, summary)
        except BaseException:
            drop_quietly(tmp)
            raise
    return {'database': name, 'lang': lang, 'modules': modules_of(name), 'from': origin, 'company': company,
            'fiscal_years': years, 'method': how['method'], 'closed_connections': how.get('closed_connections', 0),
            **({'notice': how['notice']} if how.get('notice') else {}), 'seconds': round(time.monotonic() - started, 2)}


def _init_with_trytond_admin(name, lang, modules):
    import tempfile
    q("CREATE DATABASE %s OWNER tryton ENCODING 'UTF8' TEMPLATE template0" % quote_ident(name))
    hide(name)
    os.makedirs(RUN_DIR, exist_ok=True)
    # trytond-admin wants a clear password for a new database: a throwaway one, replaced after
    with tempfile.NamedTemporaryFile('w', dir=RUN_DIR, delete=False) as pf:
        pf.write(secrets.token_urlsafe(24) + '\n')
    os.chmod(pf.name, 0o600)
    run(['chown', 'tryton', pf.name])
    try:
        from pgilib import run_as
        run_as('tryton', ['trytond-admin', '-c', TRYTOND_CONF, '-d', name, '--email', '', '-l', lang, '-u', 'ir', 'res'] + modules
               + ['--activate-dependencies'], env=dict(os.environ, TRYTONPASSFILE=pf.name))
    finally:
        os.remove(pf.name)


def copy(src, dst, close=True):
    """dst as a copy of src (neutralised); see clone() for how src's connections are handled."""
    check_name(dst)
    require_database(src)
    require_free([dst])
    cleanup_stale()
    with Locks('copy %s to %s' % (src, dst), exclusive=[dst], shared=[src]):
        check_space(database_size(src), 'copying %s' % src)
        tmp = tmp_name('copy')
        started = time.monotonic()
        try:
            how = clone(src, tmp, close=close)
            with session(tmp, role='tryton') as c, c.cursor() as cur:
                n = neutralise(cur)
                ensure_health_user(cur)
                meta_set(cur, kind='copy', source=src, created_at=iso(now_utc()), login_check='false')
                summary = summary_of(meta_get(cur))
            finish(tmp, dst, summary)
        except BaseException:
            drop_quietly(tmp)
            raise
    return dict(how, source=src, database=dst, cron_disabled=n, seconds=round(time.monotonic() - started, 2))


# ---------------------------------------------------------------------------------------------
# classes

HEADER_NAMES = {
    'last': ('nom', 'nom de famille', 'nom eleve', 'nom de l eleve', 'name', 'last name', 'lastname', 'surname', 'family name'),
    'first': ('prenom', 'prenoms', 'prenom eleve', 'first name', 'firstname', 'given name'),
    'class': ('classe', 'division', 'class', 'groupe', 'group', 'code classe', 'structure', 'classes'),
    'full': ('eleve', 'eleves', 'nom prenom', 'nom et prenom', 'student', 'nom complet'),
}
MAX_STUDENTS = 500


def _fold(s):
    """Lowercase ASCII (accents removed) with runs of other characters as one space."""
    s = unicodedata.normalize('NFKD', s)
    s = ''.join(ch for ch in s if not unicodedata.combining(ch)).lower()
    return re.sub(r'[^a-z0-9]+', ' ', s).strip()


def _slug(s, sep='.'):
    return re.sub(r'[^a-z0-9]+', sep, _fold(s)).strip(sep)


def read_students(data):
    """Students from a CSV as school software exports it (SIECLE, Pronote, a spreadsheet): UTF-8
    (with or without BOM) or Windows-1252, separated by ; , or tab; a header line naming the
    columns (nom, prénom, classe / division, or one "élève" column "NOM Prénom"), or no header and
    the columns in that order. Returns (students, errors): every bad line with its number."""
    if isinstance(data, str):
        text = data
    else:
        if data.startswith(b'\xef\xbb\xbf'):
            data = data[3:]
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError:
            text = data.decode('cp1252', errors='replace')
    errors = []
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), '')
    if not first:
        return [], [{'line': 1, 'message': 'the file is empty'}]
    delim = max((';', ',', '\t'), key=lambda d: first.count(d))
    if first.count(delim) == 0:
        delim = ';'
    reader = csv.reader(io.StringIO(text, newline=''), delimiter=delim)
    students = []
    cols = None
    for row in reader:
        line = reader.line_num
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if cols is None:
            folded = [_fold(c) for c in cells]
            mapping = {}
            for i, f in enumerate(folded):
                for key, names in HEADER_NAMES.items():
                    if f in names and key not in mapping:
                        mapping[key] = i
            if ('last' in mapping and 'first' in mapping) or 'full' in mapping:
                cols = mapping
                continue
            cols = {'last': 0, 'first': 1, 'class': 2}
        def cell(key):
            i = cols.get(key)
            return cells[i] if i is not None and i < len(cells) else ''
        if 'full' in cols and not ('last' in cols and 'first' in cols):
            full = cell('full')
            words = full.split()
            last = ' '.join(w for w in words if w.upper() == w and any(ch.isalpha() for ch in w))
            firstname = ' '.join(w for w in words if not (w.upper() == w and any(ch.isalpha() for ch in w)))
            if not last or not firstname:
                errors.append({'line': line, 'message': '%r: expected "NOM Prénom" (family name in capitals)' % full})
                continue
        else:
            last, firstname = cell('last'), cell('first')
        klass = cell('class')
        problems = []
        for label, value in (('nom', last), ('prénom', firstname)):
            if not value:
                problems.append('%s manquant' % label)
            elif len(value) > 80:
                problems.append('%s trop long (%d caractères, 80 au plus)' % (label, len(value)))
            elif any(unicodedata.category(ch).startswith('C') for ch in value) or '\ufffd' in value:
                problems.append('%s contient des caractères illisibles' % label)
            elif not _fold(value):
                problems.append('%s sans lettre ni chiffre' % label)
        if len(klass) > 40:
            problems.append('classe trop longue')
        if problems:
            errors.append({'line': line, 'message': ', '.join(problems)})
            continue
        students.append({'line': line, 'last_name': last, 'first_name': firstname, 'class': klass or None})
    if not students and not errors:
        errors.append({'line': 1, 'message': 'no student in the file'})
    if len(students) > MAX_STUDENTS:
        errors.append({'line': students[MAX_STUDENTS]['line'], 'message': 'more than %d students' % MAX_STUDENTS})
    return students, errors


def plan_class(students, mode, prefix, teacher):
    """Logins (prénom.nom, deduplicated) and, per student, the database name (PREFIX_prenom_nom)."""
    taken = {'admin', 'root', HEALTH_LOGIN, teacher}
    names = set()
    for s in students:
        base = (_slug(s['first_name']) + '.' + _slug(s['last_name']))[:60].strip('.')
        login, n = base, 2
        while login in taken:
            login, n = '%s%d' % (base, n), n + 1
        taken.add(login)
        s['login'] = login
        if mode == 'per-student':
            stem = ('%s_%s' % (prefix, login.replace('.', '_').replace('-', '_')))
            stem = re.sub(r'_+', '_', stem)[:60].rstrip('_')
            db, n = stem, 2
            while db in names:
                db, n = '%s%d' % (stem, n), n + 1
            names.add(db)
            s['database'] = db
        else:
            s['database'] = prefix
    return students


def make_class(model, students_file, mode='per-student', prefix=None, teacher='professeur', label=None, workers=None, close=True):
    """A class from a model database: per-student (one copy of the model per student, with a
    Tryton user for the student and one for the teacher) or shared (one copy, one user per student).
    All or nothing: on any error every database it made is dropped. Returns the databases with
    each student's login and generated password (and the teacher's, when created): the caller
    encrypts them; the engine keeps no copy."""
    if mode not in ('per-student', 'shared'):
        raise DbError('invalid_mode', 'mode %r: per-student or shared' % mode, INVALID)
    if not isinstance(teacher, str) or not LOGIN_RE.match(teacher) or teacher in ('admin', 'root', HEALTH_LOGIN):
        raise DbError('invalid_login', 'teacher login %r: lowercase letters, digits, . _ - (not admin)' % (teacher,), INVALID)
    try:
        if students_file == '-':
            import sys
            data = sys.stdin.buffer.read()
        else:
            with open(students_file, 'rb') as f:
                data = f.read(4 << 20)
    except OSError as e:
        raise DbError('no_file', 'cannot read the student list %s: %s' % (students_file, e.strerror), INVALID)
    students, errors = read_students(data)
    if errors:
        raise DbError('invalid_csv', 'the student list has %d bad line%s (nothing was created): %s' % (
            len(errors), 's' if len(errors) > 1 else '', '; '.join('line %d: %s' % (e['line'], e['message']) for e in errors[:10])),
            INVALID, rows=errors)
    codes = sorted({s['class'] for s in students if s['class']})
    if label is None:
        label = codes[0] if len(codes) == 1 else None
    if prefix is None:
        prefix = _slug(label, '_') if label else model
        prefix = re.sub(r'^[^a-z]+', '', prefix)[:40].rstrip('_') or 'classe'
    if not PREFIX_RE.match(prefix) or prefix.startswith(RESERVED_PREFIXES):
        raise DbError('invalid_prefix', 'prefix %r: 1 to 40 lowercase letters, digits and _, starting with a letter' % prefix, INVALID)
    require_database(model)
    plan_class(students, mode, prefix, teacher)
    targets = sorted({s['database'] for s in students})
    for t in targets:
        check_name(t)
    require_free(targets)
    started = time.monotonic()
    cleanup_stale()
    with Locks('class %s from %s' % (label or prefix, model), exclusive=targets, shared=[model]):
        check_space(database_size(model) * len(targets), 'a class of %d database%s from %s' % (len(targets), 's' if len(targets) > 1 else '', model))
        stage = tmp_name('class')
        made = []
        try:
            how = clone(model, stage, close=close)
            teacher_out = {'login': teacher, 'created': False, 'password': None}
            with session(stage, role='tryton') as c, c.cursor() as cur:
                neutralise(cur)
                ensure_health_user(cur)
                users = UserFactory(cur)
                if users.find(teacher) is None:
                    teacher_out['password'] = gen_password(12)
                    users.create(teacher, 'Professeur' if teacher == 'professeur' else teacher, generated_password_hash(teacher_out['password']),
                                 'teacher')
                    teacher_out['created'] = True
                clash = [s['login'] for s in students if users.find(s['login']) is not None]
                if clash:
                    raise DbError('login_exists', 'the model already has users with the logins %s' % ', '.join(clash[:10]), INVALID, logins=clash)
                meta_set(cur, kind='class-student' if mode == 'per-student' else 'class-shared', class_label=label or prefix,
                         class_prefix=prefix, model=model, teacher=teacher, created_at=iso(now_utc()), login_check='false',
                         tryton_series=tryton_series(), tryton_version=tryton_version())
                summary = summary_of(meta_get(cur))
                if mode == 'shared':
                    for s in students:
                        s['password'] = gen_password()
                        users.create(s['login'], '%s %s' % (s['first_name'], s['last_name']), generated_password_hash(s['password']), 'student')
            if mode == 'shared':
                finish(stage, prefix, summary)
                made.append(prefix)
                stage = None
            else:
                _per_student(stage, students, made, users, summary, workers)
        except BaseException:
            for name in made:
                drop_quietly(name)
            raise
        finally:
            if stage:
                drop_quietly(stage)
    dbs = {}
    for s in students:
        dbs.setdefault(s['database'], []).append({'login': s['login'], 'last_name': s['last_name'], 'first_name': s['first_name'],
                                                  'class': s['class'], 'password': s['password'], 'line': s['line']})
    return {'class': label or prefix, 'mode': mode, 'model': model, 'prefix': prefix, 'method': how['method'],
            'closed_connections': how.get('closed_connections', 0), **({'notice': how['notice']} if how.get('notice') else {}),
            'teacher': teacher_out,
            'databases': [{'name': n, 'students': v} for n, v in sorted(dbs.items())],
            'passwords': 'in this output only: the engine keeps none', 'seconds': round(time.monotonic() - started, 2)}


def copies_at_once():
    """How many copies of a class run side by side: one per CPU the VM has, at most two
    (PGI_DB_COPIES overrides). Under software emulation a copy is CPU-bound in the VM (its kernel
    creating, writing and fsyncing ~1,500 files), so a second one only pays off on a second CPU:
    with one vCPU, three side by side took three times as long each; with the two vCPUs a deploy
    gives, two side by side made a class of 30 faster on average (docs/performance.md, db-class).
    More than two is not tried: each FILE_COPY asks for two checkpoints, which copies side by
    side wait on, and a class should not take all of the disk from the lessons going on."""
    try:
        n = int(os.environ.get('PGI_DB_COPIES') or 0)
    except ValueError:
        n = 0
    return n if n >= 1 else max(1, min(2, len(os.sched_getaffinity(0))))


def _per_student(stage, students, made, users, summary, workers=None):
    """One copy of the staging database per student, then the student's user in it (one statement,
    from what `users` read in the staging copy). At most copies_at_once() copies at a time (one
    per CPU, at most two: copy_lock). One thread more than that, each with its own connections:
    while copies run, another writes a finished copy's user and puts it in place (and password
    hashes run in their own: pbkdf2 runs in C without Python's lock). Each database appears
    under its name only when complete."""
    import concurrent.futures
    import threading
    for s in students:
        s['password'] = gen_password()
    copies = copies_at_once()
    workers = workers or int(os.environ.get('PGI_DB_WORKERS', str(copies + 1)))
    local = threading.local()
    admins = []
    copy_lock = threading.BoundedSemaphore(copies)
    stopping = threading.Event()

    def admin_conn():
        if getattr(local, 'conn', None) is None:
            local.conn = _connect('postgres', autocommit=True)
            admins.append(local.conn)
        return local.conn

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as hasher:
            futures = {s['login']: hasher.submit(generated_password_hash, s['password']) for s in students}

            def one(s):
                tmp = tmp_name('st')
                with copy_lock:
                    if stopping.is_set():  # waited for its turn while the class failed: not begun
                        raise DbError('cancelled', 'not made: the class failed or was interrupted')
                    with admin_conn().cursor() as cur:
                        cur.execute(create_database_sql(tmp, stage))
                        hide(tmp, cur)
                try:
                    with session(tmp, role='tryton') as c2, c2.cursor() as cur:
                        users.create(s['login'], '%s %s' % (s['first_name'], s['last_name']), futures[s['login']].result(), 'student', cur=cur)
                        cur.execute("INSERT INTO pgi_meta (key, value) VALUES ('student', %s)", (s['login'],))
                    with admin_conn().cursor() as cur:
                        finish(tmp, s['database'], dict(summary, student=s['login']), cur)
                except BaseException:
                    drop_quietly(tmp)
                    raise
                return s['database']

            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                pending = {pool.submit(one, s) for s in students}
                failure = None
                while pending:
                    try:
                        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    except BaseException as e:  # interrupted while waiting (Ctrl-C; SIGTERM or SIGHUP, see pgi-db)
                        failure = failure or e
                        done = set()
                    for f in done:
                        if f.cancelled():
                            continue
                        if f.exception() is None:
                            made.append(f.result())
                        else:
                            failure = failure or f.exception()
                    if failure is not None:
                        # on the first failure the students not started are not made at all; the
                        # copies under way end (a CREATE DATABASE is not cut short) and are dropped
                        # with the others by the caller, which gets `made` complete
                        stopping.set()
                        for f in pending:
                            f.cancel()
                        hasher.shutdown(wait=False, cancel_futures=True)
                if failure is not None:
                    raise failure
    finally:
        for c in admins:
            c.close()


# ---------------------------------------------------------------------------------------------
# backups (per database, beside pgi-backup's nightly sets)

def _stamp():
    return now_utc().strftime('%Y%m%dT%H%M%SZ')


def pg_restore_list(path):
    """The archive's table of contents (pg_restore --list), or DbError invalid_dump."""
    r = run([pg_tool('pg_restore'), '--list', path], check=False)
    if r.returncode != 0:
        raise DbError('invalid_dump', '%s is not a PostgreSQL custom-format dump: %s' % (os.path.basename(path),
                      (r.stderr.strip().splitlines() or ['pg_restore --list failed'])[-1]), INVALID)
    return r.stdout


def _row_counts(name):
    from pgilib import row_counts, close
    try:
        return row_counts(name)
    finally:
        close(name)


def dump_database(name, kind, verify=False):
    """pg_dump -Fc of `name` into /srv/pgi/backups/databases/NAME/STAMP-KIND.dump with its manifest
    (STAMP-KIND.json: pgi-backup's per-database entry — file, sha256, size, row_counts — plus the
    database's size, modules, Tryton series and the verification); checked with pg_restore --list,
    and with verify, restored into a scratch database whose row counts must match."""
    stamp_series(name)
    d = os.path.join(DB_BACKUPS, name)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(DB_BACKUPS, 0o700)
    stamp = _stamp()
    bid = '%s-%s' % (stamp, kind)
    n = 2
    while os.path.exists(os.path.join(d, bid + '.dump')):
        bid, n = '%s-%s-%d' % (stamp, kind, n), n + 1
    final = os.path.join(d, bid + '.dump')
    part = os.path.join(d, '.partial-' + bid + '.dump')
    counts = _row_counts(name)
    size_db = database_size(name)
    with open(part, 'wb') as f:
        os.fchmod(f.fileno(), 0o600)
        r = subprocess.run([pg_tool('pg_dump'), '-Fc', '-Z', '6'] + pg_args() + [name], stdout=f, stderr=subprocess.PIPE)
    if r.returncode != 0:
        os.remove(part)
        raise DbError('dump_failed', 'pg_dump %s failed: %s' % (name, r.stderr.decode(errors='replace').strip()[-500:]))
    try:
        pg_restore_list(part)
        verified = {'ok': True, 'method': 'list', 'at': iso(now_utc())}
        if verify:
            verified = verify_dump(part, counts)
        entry = {'format': 1, 'id': bid, 'database': name, 'kind': kind, 'file': bid + '.dump', 'sha256': sha256_file(part),
                 'size': os.path.getsize(part), 'row_counts': counts, 'db_size': size_db, 'modules': modules_of(name),
                 'tryton_series': tryton_series(), 'tryton_version': tryton_version(), 'created_at': iso(now_utc()),
                 'image': {k: image_info().get(k) for k in ('name', 'version')}, 'verified': verified}
        os.rename(part, final)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    write_json(os.path.join(d, bid + '.json'), entry, 0o600)
    return _entry_out(entry, final)


def verify_dump(path, counts):
    scratch = 'pgi_verify_%d_%s' % (os.getpid(), secrets.token_hex(4))
    try:
        restore_into(scratch, path)
        got = _row_counts(scratch)
        ok = got == counts
        return {'ok': ok, 'method': 'restore', 'at': iso(now_utc()), **({} if ok else {'row_counts': got})}
    finally:
        drop_quietly(scratch)


def _entry_out(e, path):
    return {'id': e['id'], 'database': e['database'], 'kind': e['kind'], 'date': e['created_at'], 'size': e['size'],
            'sha256': e['sha256'], 'verified': e.get('verified'), 'path': path}


def _prune(name):
    d = os.path.join(DB_BACKUPS, name)
    manual = sorted(f[:-5] for f in os.listdir(d) if f.endswith('.json') and '-manual' in f)
    removed = []
    for bid in manual[:-MANUAL_KEEP] if MANUAL_KEEP > 0 else []:
        for ext in ('.dump', '.json'):
            try:
                os.remove(os.path.join(d, bid + ext))
            except FileNotFoundError:
                pass
        removed.append(bid)
    return removed


def backup(names=None, verify=False):
    """Backs up the named databases (default: every Tryton database) one by one."""
    if names:
        for n in names:
            require_database(n)
    else:
        names = []
        for n in user_databases():
            with session(n) as c, c.cursor() as cur:
                if is_tryton(cur):
                    names.append(n)
    out = []
    with Locks('backup', shared=names):
        need = sum(database_size(n) for n in names) // 4
        check_space(need, 'backing up %d database%s' % (len(names), 's' if len(names) != 1 else ''))
        for n in names:
            e = dump_database(n, 'manual', verify=verify)
            e['pruned'] = _prune(n)
            out.append(e)
    return out


def backups(name=None):
    """What can be restored, newest first: per-database dumps (manual, before-replace, final) and
    the databases in pgi-backup's nightly sets. For one database, or all."""
    out = []
    if os.path.isdir(DB_BACKUPS):
        for db in sorted(os.listdir(DB_BACKUPS)):
            if name and db != name:
                continue
            d = os.path.join(DB_BACKUPS, db)
            for f in sorted(os.listdir(d)):
                if f.endswith('.json') and not f.startswith('.'):
                    e = read_json(os.path.join(d, f))
                    if e and os.path.exists(os.path.join(d, e['file'])):
                        out.append(_entry_out(e, os.path.join(d, e['file'])))
    if os.path.isdir(BACKUPS):
        for stamp in sorted(os.listdir(BACKUPS)):
            mpath = os.path.join(BACKUPS, stamp, 'manifest.json')
            if stamp.startswith('.') or not os.path.exists(mpath):
                continue
            m = read_json(mpath) or {}
            ver = read_json(os.path.join(BACKUPS, stamp, 'verified.json')) or {}
            vdb = {v.get('name'): v for v in ver.get('verified', [])}
            for e in m.get('databases', []):
                if name and e.get('name') != name:
                    continue
                v = vdb.get(e.get('name'))
                out.append({'id': stamp, 'database': e.get('name'), 'kind': 'nightly', 'date': m.get('finished_at') or m.get('started_at'),
                            'size': e.get('size'), 'sha256': e.get('sha256'),
                            'verified': {'ok': bool(v.get('ok')), 'method': 'restore', 'at': ver.get('at')} if v else None,
                            'path': os.path.join(BACKUPS, stamp, e.get('file', ''))})
    out.sort(key=lambda e: (e['date'] or '', e['id']), reverse=True)
    return out


def _find_backup(name, ident):
    entries = backups(name)
    if not entries:
        raise DbError('no_backup', 'no backup of %s to restore' % name, NOT_FOUND, database=name)
    if ident in (None, 'latest'):
        return entries[0]
    for e in entries:
        if e['id'] == ident:
            return e
    raise DbError('no_backup', 'no backup %s of %s (pgi-db backups %s lists them)' % (ident, name, name), NOT_FOUND, database=name, id=ident)


def restore(name, ident='latest', as_name=None, replace=False):
    """Restores a backup of `name`: into a new database (as_name; by default `name` itself when it
    no longer exists, else NAME_YYYYMMDD_HHMM from the backup's date), or in place with replace,
    which first keeps a dump of what it replaces (kind before-replace). A copy under another name is
    neutralised; the administrator gets the current admin password in both cases."""
    check_name(name)
    if as_name and replace:
        raise DbError('usage', '--as and --replace exclude each other', USAGE)
    entry = _find_backup(name, ident)
    if not os.path.exists(entry['path']):
        raise DbError('no_backup', 'backup file %s is missing' % entry['path'], NOT_FOUND)
    if replace:
        target = name
    elif as_name:
        target = check_name(as_name)
    elif not exists(name):
        target = name
    else:
        target = check_name(('%s_%s' % (name[:48], entry['date'][:16].replace('-', '').replace('T', '_').replace(':', ''))))
    in_place = replace and exists(name)
    if not in_place:
        require_free([target])
    cleanup_stale()
    with Locks('restore %s' % target, exclusive=[target, name] if in_place else [target]):
        need = entry['size'] * dump_expansion(entry['path']) + (entry['size'] if in_place else 0)
        check_space(need, 'restoring %s' % name)
        if sha256_file(entry['path']) != entry['sha256']:
            raise DbError('checksum', 'backup %s of %s is damaged (sha256 mismatch): not restored' % (entry['id'], name), INVALID)
        started = time.monotonic()
        kept = dump_database(name, 'before-replace') if in_place else None
        tmp = tmp_name('rst')
        try:
            restore_into(tmp, entry['path'])
            with session(tmp, role='tryton') as c, c.cursor() as cur:
                if not is_tryton(cur):
                    raise DbError('not_tryton', 'backup %s is not a Tryton database' % entry['id'], INVALID)
                set_admin_hash(cur)
                if target != name:
                    neutralise(cur)
                ensure_health_user(cur)
                bump_caches(cur)
                meta_set(cur, restored_from=json.dumps({'database': name, 'id': entry['id'], 'date': entry['date']}),
                         restored_at=iso(now_utc()), **({'kind': 'restore', 'login_check': 'false', 'source': name} if target != name else {}))
                summary = summary_of(meta_get(cur))
            closed = 0
            if in_place:
                closed = _swap(tmp, name, summary)
            else:
                finish(tmp, target, summary)
        except BaseException:
            drop_quietly(tmp)
            raise
        if closed:
            release_trytond(name, closed)
    out = {'database': target, 'from': {k: entry[k] for k in ('id', 'kind', 'date', 'size')}, 'replaced': in_place,
           'kept': kept, 'seconds': round(time.monotonic() - started, 2)}
    if in_place:
        out['closed_connections'] = closed
        out['notice'] = ('%d session(s) on %s closed for the replacement (trytond\'s released: no request fails on them); whoever '
                         'had it open in Tryton works on the restored database from their next action' % (closed, name))
    return out


def _swap(tmp, name, summary):
    """`name` replaced by `tmp`: every session on `name` is closed (a restore in place takes the
    database from under its users: the caller has warned them), renamed aside, then dropped."""
    old = tmp_name('old')
    closed = 0
    try:
        for attempt in range(20):
            closed += sum(1 for r in q('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()',
                                       (name,)) if r[0])
            try:
                q('ALTER DATABASE %s RENAME TO %s' % (quote_ident(name), quote_ident(old)))
                break
            except Exception as e:  # a session came back between the two statements
                if attempt == 19:
                    raise DbError('busy', 'could not take %s from its sessions: %s' % (name, e), BUSY)
                time.sleep(0.1)
        finish(tmp, name, summary)
    except BaseException:
        # the original back in its place, wherever the failure or the interruption (pgi-db) came:
        # from what exists, not from how far this got (a signal is raised just after a statement
        # returns); under `name`, only the new copy can be there (the lock on `name` is held)
        if exists(old):
            if exists(name):
                drop_quietly(name)
            q('ALTER DATABASE %s RENAME TO %s' % (quote_ident(old), quote_ident(name)))
        raise
    drop_quietly(old)
    return closed


def drop(name):
    """Drops `name` after a final dump (kind "final", never pruned, on the data disk), which
    pgi-db restore NAME brings back."""
    require_database(name, tryton=False)
    with Locks('drop %s' % name, exclusive=[name]):
        check_space(database_size(name) // 4, 'the final backup of %s' % name)
        final = dump_database(name, 'final')
        pooled = tryton_sessions(name)
        q('DROP DATABASE %s%s' % (quote_ident(name), ' WITH (FORCE)' if server_version_num() >= 130000 else ''))
        note_closed(name, pooled)
    return {'database': name, 'dropped': True, 'final_backup': final}


# ---------------------------------------------------------------------------------------------
# export, import


def export(name, out=None):
    """A dump of `name` for taking away (pg_dump -Fc) with its manifest beside it (FILE.json:
    database, Tryton series and version, modules, sha256). Default place /srv/pgi/exports/, where
    exports older than a day are removed."""
    require_database(name)
    with Locks('export %s' % name, shared=[name]):
        check_space(database_size(name) // 4, 'exporting %s' % name)
        stamp_series(name)
        os.makedirs(EXPORTS, mode=0o700, exist_ok=True)
        _prune_exports()
        path = out or os.path.join(EXPORTS, '%s-%s.dump' % (name, _stamp()))
        part = path + '.partial'
        with open(part, 'wb') as f:
            os.fchmod(f.fileno(), 0o600)
            r = subprocess.run([pg_tool('pg_dump'), '-Fc', '-Z', '6'] + pg_args() + [name], stdout=f, stderr=subprocess.PIPE)
        if r.returncode != 0:
            os.remove(part)
            raise DbError('dump_failed', 'pg_dump %s failed: %s' % (name, r.stderr.decode(errors='replace').strip()[-500:]))
        os.rename(part, path)
        manifest = {'format': 1, 'kind': 'pgi-db export', 'database': name, 'file': os.path.basename(path), 'size': os.path.getsize(path),
                    'sha256': sha256_file(path), 'tryton_series': tryton_series(), 'tryton_version': tryton_version(),
                    'modules': modules_of(name), 'created_at': iso(now_utc()), 'image': {k: image_info().get(k) for k in ('name', 'version')}}
        write_json(path + '.json', manifest, 0o600)
    return dict(manifest, path=path, manifest=path + '.json')


def _prune_exports():
    limit = time.time() - 24 * 3600
    for f in os.listdir(EXPORTS):
        p = os.path.join(EXPORTS, f)
        try:
            if os.path.getmtime(p) < limit:
                os.remove(p)
        except OSError:
            pass


def _copy_rows(path, table):
    """The rows of one table of a custom-format dump ({column: value}), read with pg_restore -a -t."""
    r = run([pg_tool('pg_restore'), '-a', '-t', table, '-f', '-', path], check=False)
    if r.returncode != 0:
        return None
    rows, cols, inside = [], None, False
    for line in r.stdout.splitlines():
        if not inside:
            m = re.match(r'^COPY [\w."]+ \((.*)\) FROM stdin;$', line)
            if m:
                cols = [c.strip().strip('"') for c in m.group(1).split(',')]
                inside = True
            continue
        if line == '\\.':
            break
        vals = [None if v == '\\N' else re.sub(r'\\(.)', lambda m: {'t': '\t', 'n': '\n', 'r': '\r', '\\': '\\'}.get(m.group(1), m.group(1)), v)
                for v in line.split('\t')]
        rows.append(dict(zip(cols, vals)))
    return rows


SCHEMA_TABLES = ('ir_model', 'ir_model_field', 'ir_model_data', 'ir_module', 'ir_translation', 'ir_ui_view', 'ir_action', 'ir_lang',
                 'ir_configuration', 'ir_session', 'ir_cron')


def _schema_fingerprint(path):
    """{table: sorted columns} of some of Tryton's core tables in a dump (from pg_restore -s)."""
    r = run([pg_tool('pg_restore'), '-s', '-f', '-', path], check=False)
    out = {}
    for m in re.finditer(r'^CREATE TABLE public\.("?)(\w+)\1 \((.*?)\n\);', r.stdout, re.S | re.M):
        if m.group(2) in SCHEMA_TABLES:
            out[m.group(2)] = sorted(ln.strip().split(' ')[0].strip('"') for ln in m.group(3).strip().split(',\n') if ln.strip()
                                     and not ln.strip().startswith('CONSTRAINT'))
    return out


def dump_compressed(path):
    """Whether a custom-format dump is compressed, from its header: "PGDMP", version (major, minor,
    revision), int size, offset size, format, then the compression — archive 1.14 (PostgreSQL 15):
    an int (sign byte + int-size bytes, little-endian), the -Z level; 1.15+ (PostgreSQL 16+): one
    byte, the algorithm (0 none). Read here rather than through `pg_restore --list`: the space
    checks run before any tool. Unknown headers count as compressed (the larger estimate)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(16)
    except OSError:
        return True
    if len(head) < 16 or head[:5] != b'PGDMP' or head[5] != 1:
        return True
    if head[6] <= 14:
        size = head[8]
        level = int.from_bytes(head[12:12 + size], 'little') if 12 + size <= len(head) else 1
        return head[11] != 0 or level != 0
    return head[11] != 0


def dump_expansion(path):
    """How many times its size the database a dump holds takes once restored (an estimate)."""
    return DUMP_EXPANSION if dump_compressed(path) else DUMP_EXPANSION_UNCOMPRESSED


def inspect_dump(path):
    """What a dump holds, before anything is created: a custom-format archive (pg_restore --list)
    of a Tryton database (ir_module and res_user tables), its activated modules and the Tryton
    series it comes from (its pgi_meta, else a manifest FILE.json beside it, else its schema compared
    with this server's template). DbError invalid_dump / other_series / missing_modules otherwise."""
    if not os.path.isfile(path):
        raise DbError('no_file', 'no such file %s' % path, INVALID)
    size = os.path.getsize(path)
    if size == 0:
        raise DbError('invalid_dump', '%s is empty' % path, INVALID)
    if size > IMPORT_MAX_BYTES:
        raise DbError('too_big', '%s is %s, above the %s limit' % (path, human(size), human(IMPORT_MAX_BYTES)), INVALID)
    toc = pg_restore_list(path)
    tables = set(re.findall(r'^\d+; \d+ \d+ TABLE public ("?\w+"?) ', toc, re.M))
    tables = {t.strip('"') for t in tables}
    if not {'ir_module', 'res_user'} <= tables:
        raise DbError('not_tryton', '%s is a PostgreSQL dump but not of a Tryton database (no ir_module/res_user tables)' % os.path.basename(path), INVALID)
    modules = sorted(r['name'] for r in (_copy_rows(path, 'ir_module') or []) if r.get('state') == 'activated')
    here_series, how = tryton_series(), None
    series = None
    if 'pgi_meta' in tables:
        meta = {r['key']: r['value'] for r in (_copy_rows(path, 'pgi_meta') or [])}
        series = meta.get('tryton_series')
        how = 'pgi_meta' if series else None
    if series is None and os.path.exists(path + '.json'):
        series = (read_json(path + '.json') or {}).get('tryton_series')
        how = 'manifest' if series else None
    if series is None:
        dump, _ = template_paths('bts')
        if os.path.exists(dump):
            theirs, ours = _schema_fingerprint(path), _schema_fingerprint(dump)
            diff = sorted(t for t in ours if theirs.get(t) != ours[t])
            if diff:
                raise DbError('other_series', '%s does not say which Tryton series it comes from, and its Tryton tables differ from '
                              'this server\'s Tryton %s (%s): it comes from another series; migrate it on a server of its series first'
                              % (os.path.basename(path), here_series, ', '.join(diff[:5])), INVALID, tables=diff)
            series, how = here_series, 'schema'
    if series != here_series:
        raise DbError('other_series', '%s comes from Tryton %s; this server runs Tryton %s: a database moves between series only '
                      'through an upgrade (trytond-admin --all on a server of the newer series, with its migration steps)'
                      % (os.path.basename(path), series or 'unknown', here_series), INVALID, dump_series=series, server_series=here_series)
    avail = _available_modules()
    missing = [m for m in modules if avail is not None and m not in avail]
    if missing:
        raise DbError('missing_modules', '%s uses Tryton modules this server does not have: %s' % (os.path.basename(path), ', '.join(missing)),
                      INVALID, modules=missing)
    return {'size': size, 'modules': modules, 'tryton_series': series, 'series_from': how}


def _available_modules():
    import importlib.util
    spec = importlib.util.find_spec('trytond')
    if spec is None:
        return None
    base = os.path.dirname(spec.origin)
    return {'ir', 'res'} | {m for m in os.listdir(os.path.join(base, 'modules')) if os.path.exists(os.path.join(base, 'modules', m, 'tryton.cfg'))}


def import_(path, as_name):
    """A new database `as_name` from a dump (checked by inspect_dump before anything is made),
    neutralised, with this server's administrator password."""
    check_name(as_name)
    require_free([as_name])
    info = inspect_dump(path)
    cleanup_stale()
    with Locks('import %s' % as_name, exclusive=[as_name]):
        check_space(info['size'] * dump_expansion(path), 'importing %s' % os.path.basename(path))
        started = time.monotonic()
        tmp = tmp_name('imp')
        try:
            restore_into(tmp, path)
            with session(tmp, role='tryton') as c, c.cursor() as cur:
                admin_set = set_admin_hash(cur)
                n = neutralise(cur)
                ensure_health_user(cur)
                meta_set(cur, kind='import', source=os.path.basename(path), created_at=iso(now_utc()), login_check='false',
                         tryton_series=tryton_series(), tryton_version=tryton_version())
                summary = summary_of(meta_get(cur))
            finish(tmp, as_name, summary)
        except BaseException:
            drop_quietly(tmp)
            raise
    return dict(info, database=as_name, admin_password_set=admin_set, cron_disabled=n, seconds=round(time.monotonic() - started, 2))


# ---------------------------------------------------------------------------------------------
# list, login check


def list_databases():
    """Every database: name, size, Tryton or not, activated modules, kind and class (pgi_meta),
    last backup (per-database dumps and nightly sets)."""
    last = {}
    for e in backups():
        last.setdefault(e['database'], e)
    import concurrent.futures

    def one(n):
        entry = {'name': n, 'size': database_size(n), 'tryton': False, 'modules': [], 'kind': None, 'class': None, 'last_backup': None}
        try:
            with session(n) as c, c.cursor() as cur:
                if is_tryton(cur):
                    entry['tryton'] = True
                    cur.execute("SELECT name FROM ir_module WHERE state = 'activated' ORDER BY name")
                    entry['modules'] = [r[0] for r in cur.fetchall()]
                    m = meta_get(cur) or {}
                    entry['kind'] = m.get('kind')
                    entry['class'] = m.get('class_label')
                    if m.get('student'):
                        entry['student'] = m['student']
                    comps = companies(cur)
                    entry['company'] = comps[0][2] if len(comps) == 1 else None
        except Exception as e:
            entry['error'] = str(e).strip()[-200:]
        b = last.get(n)
        if b:
            entry['last_backup'] = {'id': b['id'], 'date': b['date'], 'kind': b['kind']}
        return entry

    # one connection per database (a backend start: a fraction of a second emulated), four at a time
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, user_databases()))


# trytond's pooled connections closed by the engine. trytond (6.0 and 7.0) keeps, per database
# name, a pool of connections it never checks before use and has no call to drop a pool (only its
# own db.drop, behind the server password the image does not set): a connection the engine
# terminated (a copy of a database in use, a restore or reset in place, a drop) stays in the pool
# and the next request that takes it fails once ("server closed the connection unexpectedly"),
# then trytond discards it. The engine takes those failures itself: right after the operation it
# logs the login-check user into the database through trytond until a login succeeds, so every
# dead connection is used, and discarded, by the engine instead of a teacher or a student. A name
# dropped (or whose database was swapped away) with trytond connections is remembered in RUN_DIR
# (a tmpfs: trytond's pools do not outlive a reboot either) until a database appears under it again.
TRYTOND_CLOSED = os.path.join(RUN_DIR, 'trytond-closed.json')


def _closed_edit(fn):
    import fcntl
    os.makedirs(RUN_DIR, exist_ok=True)
    fd = os.open(TRYTOND_CLOSED, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, 'r+') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            data = json.loads(f.read() or '{}')
        except ValueError:
            data = {}
        out = fn(data)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(data, sort_keys=True))
        return out


def tryton_sessions(name):
    """trytond's connections to `name` (role tryton)."""
    return q("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = 'tryton' AND pid <> pg_backend_pid()", (name,))[0][0]


def note_closed(name, n):
    """Remembers that n of trytond's connections to `name` were closed with the database."""
    if n:
        try:
            _closed_edit(lambda d: d.__setitem__(name, d.get(name, 0) + n))
        except OSError as e:
            log('pgi-db: could not record trytond\'s closed connections to %s: %s' % (name, e))


def release_trytond(name, closed=None):
    """Makes trytond discard the connections to `name` the engine closed (see TRYTOND_CLOSED): with
    `closed` after an operation on a database that exists, else those remembered for the name, if
    any. Logs the login-check user in until trytond answers a login without an error (at most one
    failure per closed connection). Returns the number of failed logins it took; never raises
    (trytond stopped or starting: it has no pool to clean)."""
    try:
        remembered = _closed_edit(lambda d: d.pop(name, 0))
    except (OSError, ValueError):
        remembered = 0
    todo = (closed or 0) + remembered
    if not todo:
        return 0
    failed = 0
    try:
        with session(name, role='tryton') as c, c.cursor() as cur:
            ensure_health_user(cur)
        secret = health_login()[0]
        url = _tryton_url(name)
        for _ in range(todo + 1):
            status, res = _rpc(url, 'common.db.login', [HEALTH_LOGIN, {'password': secret}, 'fr'], timeout=LOGIN_TIMEOUT_S)
            if status == 200 and isinstance(res, dict) and isinstance(res.get('result'), list) and res['result']:
                uid, sess = res['result'][0], res['result'][1]
                _rpc(url, 'common.db.logout', [], auth='%s:%s:%s' % (HEALTH_LOGIN, uid, sess), timeout=30)
                break
            if status in (401, 403, 429):
                break  # refused (the login-check user): nothing more to learn
            failed += 1  # an error answer (200 with "error", or 500): one dead connection discarded
    except Exception as e:  # trytond not there (its pools went with it), or too slow: not the operation's failure
        log('pgi-db: releasing trytond\'s closed connections to %s: %s: %s' % (name, type(e).__name__, str(e)[-200:]))
    return failed


def login_targets():
    """The databases pgi-health logs into: Tryton databases made by `pgi-db create` (the declared
    ones) or not by pgi-db at all, never teaching copies (see TEACHING_KINDS). Read from the
    databases' comments (one query, whatever the number of class databases); only a database
    without one (made before this engine, or by hand) is opened to read its pgi_meta."""
    out = []
    for n, summary in sorted(summaries().items()):
        if summary is None:
            try:
                with session(n) as c, c.cursor() as cur:
                    if not is_tryton(cur):
                        continue
                    summary = summary_of(meta_get(cur))
            except Exception:
                out.append(n)
                continue
        if summary['login_check']:
            out.append(n)
    return out


def _tryton_url(name):
    import urllib.parse
    return '%s/%s/' % (TRYTON_URL.rstrip('/'), urllib.parse.quote(name))


def _rpc(url, method, params, auth=None, timeout=LOGIN_TIMEOUT_S):
    import urllib.error
    import urllib.request
    body = json.dumps({'id': 1, 'method': method, 'params': params}).encode()
    headers = {'Content-Type': 'application/json'}
    if auth:
        import base64
        headers['Authorization'] = 'Session ' + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b'null')
    except urllib.error.HTTPError as e:
        return e.code, None


def login_check(names=None, timeout=LOGIN_TIMEOUT_S):
    """For each database (default: login_targets()): it opens, and Tryton's common.db.login over the
    local JSON-RPC succeeds for the login-check user, whose session is then closed. The first login
    to a database makes trytond load it (a few seconds natively, a minute or more emulated)."""
    names = list(names) if names else login_targets()
    out = []
    for n in names:
        r = {'name': n, 'ok': False}
        t0 = time.monotonic()
        try:
            require_database(n)
            with session(n, role='tryton') as c, c.cursor() as cur:
                r['user'] = ensure_health_user(cur)
            secret = health_login()[0]
            url = _tryton_url(n)
            status, res = _rpc(url, 'common.db.login', [HEALTH_LOGIN, {'password': secret}, 'fr'], timeout=timeout)
            if status == 200 and isinstance(res, dict) and res.get('error'):
                # an error that is not a refusal (a connection trytond kept and pgi-db closed for a
                # copy fails once): asked once more, as a person would
                time.sleep(0.5)
                status, res = _rpc(url, 'common.db.login', [HEALTH_LOGIN, {'password': secret}, 'fr'], timeout=timeout)
            if status == 200 and isinstance(res, dict) and isinstance(res.get('result'), list) and res['result']:
                uid, sess = res['result'][0], res['result'][1]
                _rpc(url, 'common.db.logout', [], auth='%s:%s:%s' % (HEALTH_LOGIN, uid, sess), timeout=30)
                r['ok'] = True
            else:
                err = res.get('error') if isinstance(res, dict) else None
                r['error'] = 'Tryton refused the login (HTTP %d%s)' % (status, ': %s' % str(err)[:200] if err else '')
                if r.get('user') == 'repaired':
                    r['error'] += '; the login-check user was just reset: trytond takes up to 5 minutes to see it'
        except DbError as e:
            r['error'] = str(e)
        except Exception as e:
            r['error'] = '%s: %s' % (type(e).__name__, str(e)[-300:])
        r['seconds'] = round(time.monotonic() - t0, 2)
        out.append(r)
    return out
