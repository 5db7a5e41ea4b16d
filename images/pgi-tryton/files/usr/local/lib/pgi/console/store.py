"""The console's store: one SQLite file on the data disk (accounts, sessions, classes, students,
databases and who owns them, jobs, audit log, the index of kept backups). SQLite because the
console is one small application on one server: no server to run, one file that survives OS-disk
swaps, transactions, and Python's standard library speaks it. WAL mode: the web process, the
worker and job processes read while one writes."""
import datetime
import json
import os
import sqlite3
import time

from . import config

SCHEMA = [
    # version 1
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        tryton_login TEXT NOT NULL UNIQUE,
        tryton_password TEXT,
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'disabled')),
        password_hash TEXT,
        setup_code_hash TEXT,
        setup_expires REAL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        password_set_at TEXT,
        last_login TEXT
    );
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('anon', 'teacher', 'ami')),
        account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
        ami_login TEXT,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        seen_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE login_failures (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        ip TEXT NOT NULL,
        login TEXT NOT NULL
    );
    CREATE INDEX login_failures_at ON login_failures (at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        result TEXT NOT NULL,
        detail TEXT,
        ip TEXT
    );
    CREATE TABLE classes (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES accounts(id),
        label TEXT NOT NULL,
        prefix TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL CHECK (mode IN ('per-student', 'shared')),
        model TEXT NOT NULL,
        model_db TEXT,
        company TEXT,
        status TEXT NOT NULL CHECK (status IN ('creating', 'active', 'failed', 'archiving', 'archived')),
        teacher_login TEXT NOT NULL,
        teacher_password TEXT,
        created_at TEXT NOT NULL,
        archived_at TEXT
    );
    CREATE TABLE students (
        id INTEGER PRIMARY KEY,
        class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
        line INTEGER,
        last_name TEXT NOT NULL,
        first_name TEXT NOT NULL,
        class_code TEXT,
        login TEXT NOT NULL,
        database TEXT NOT NULL,
        password TEXT
    );
    CREATE TABLE databases (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        owner_id INTEGER NOT NULL REFERENCES accounts(id),
        class_id INTEGER REFERENCES classes(id),
        kind TEXT NOT NULL CHECK (kind IN ('class-model', 'student', 'shared', 'import', 'restore-copy')),
        student_login TEXT,
        status TEXT NOT NULL CHECK (status IN ('active', 'archived', 'dropped')),
        since TEXT NOT NULL,
        until TEXT
    );
    CREATE UNIQUE INDEX databases_active_name ON databases (name) WHERE status = 'active';
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER REFERENCES accounts(id),
        actor TEXT NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        targets TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        message TEXT,
        result TEXT,
        error TEXT,
        ip TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        pid INTEGER
    );
    CREATE INDEX jobs_state ON jobs (state);
    CREATE TABLE backups_index (
        database TEXT NOT NULL,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        date TEXT,
        size INTEGER,
        verified INTEGER,
        PRIMARY KEY (database, id)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # version 2: the databases' sizes as the worker last measured them (pg_database_size stats
    # every file of a database, ~1,600 relations each: 30-50 ms a database under software
    # emulation, seconds for a class page of 30 if done in the request)
    """
    CREATE TABLE db_sizes (
        name TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        measured_at REAL NOT NULL
    );
    """,
]


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def connect(path=None):
    """A connection to the store (made, with its schema, on first use). Rows as sqlite3.Row;
    autocommit, explicit transactions with `with tx(db):`."""
    path = path or config.STORE
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fresh = not os.path.exists(path)
    db = sqlite3.connect(path, timeout=15, isolation_level=None, check_same_thread=False)
    if fresh:
        os.chmod(path, 0o600)
    db.row_factory = sqlite3.Row
    db.execute('PRAGMA busy_timeout = 15000')
    db.execute('PRAGMA foreign_keys = ON')
    if db.execute('PRAGMA journal_mode').fetchone()[0] != 'wal':
        db.execute('PRAGMA journal_mode = WAL')
    db.execute('PRAGMA synchronous = NORMAL')
    migrate(db)
    return db


def migrate(db):
    version = db.execute('PRAGMA user_version').fetchone()[0]
    if version >= len(SCHEMA):
        return
    db.execute('BEGIN IMMEDIATE')
    try:
        version = db.execute('PRAGMA user_version').fetchone()[0]
        for n in range(version, len(SCHEMA)):
            for stmt in SCHEMA[n].split(';'):
                if stmt.strip():
                    db.execute(stmt)
            db.execute('PRAGMA user_version = %d' % (n + 1))
        db.execute('COMMIT')
    except BaseException:
        db.execute('ROLLBACK')
        raise


class tx:
    """`with tx(db):` one IMMEDIATE transaction (committed, or rolled back on error)."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute('BEGIN IMMEDIATE')
        return self.db

    def __exit__(self, exc_type, *_):
        self.db.execute('ROLLBACK' if exc_type else 'COMMIT')


def audit(db, actor, role, action, target=None, result='ok', detail=None, ip=None):
    """One line of the audit log: who, what, on what, when, with what result."""
    db.execute('INSERT INTO audit (at, actor, role, action, target, result, detail, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
               (now_iso(), actor, role, action, target, result, detail if detail is None else str(detail)[:2000], ip))


def audit_rows(db, since=None, limit=200, actor=None, before=None):
    """The newest audit lines first: since a date, by one actor, older than the line id `before`."""
    sql, args = 'SELECT * FROM audit', []
    where = []
    if since:
        where.append('at >= ?')
        args.append(since)
    if actor:
        where.append('actor = ?')
        args.append(actor)
    if before:
        where.append('id < ?')
        args.append(int(before))
    if where:
        sql += ' WHERE ' + ' AND '.join(where)
    sql += ' ORDER BY id DESC LIMIT ?'
    args.append(int(limit))
    return [dict(r) for r in db.execute(sql, args)]


def meta_get(db, key, default=None):
    r = db.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
    return json.loads(r[0]) if r else default


def meta_set(db, key, value):
    db.execute('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value', (key, json.dumps(value)))


def sizes_get(db, names):
    """{name: size in bytes} as last measured by the worker (refresh_sizes), and when (the oldest
    measure of those names, epoch seconds, or None)."""
    names = list(names)
    if not names:
        return {}, None
    rows = db.execute('SELECT name, size, measured_at FROM db_sizes WHERE name IN (%s)' % ','.join('?' * len(names)), names).fetchall()
    return {r['name']: r['size'] for r in rows}, (min(r['measured_at'] for r in rows) if rows else None)


def sizes_put(db, sizes, names=None):
    """Records measured sizes; the names of `names` PostgreSQL no longer has are forgotten."""
    now = time.time()
    with tx(db):
        for name, size in sizes.items():
            db.execute('INSERT INTO db_sizes (name, size, measured_at) VALUES (?, ?, ?) '
                       'ON CONFLICT (name) DO UPDATE SET size = excluded.size, measured_at = excluded.measured_at', (name, size, now))
        for name in set(names or ()) - set(sizes):
            db.execute('DELETE FROM db_sizes WHERE name = ?', (name,))


def heartbeat(db):
    meta_set(db, 'worker_seen', time.time())
