"""The job runner (pgi-console-worker.service): starts each queued job in a process of its own
(`pgi-console job-run ID`), at most config.MAX_JOBS at a time and never two on the same database,
keeps the index of kept backups fresh for the web pages, removes expired files, and beats a
heartbeat the web application (and so pgi-health) checks.

It starts a job as soon as it is queued, and the next one as soon as a job ends: the web
application writes a byte to the worker's FIFO when it queues a job (jobs.wake), and a job
process's end (SIGCHLD) wakes it through its signal pipe; otherwise it looks at its queue once a
second. (It used to sleep a second between two scans: a job waited up to that second to start.)

Why a new process per job, not a fork of the worker (which would skip the job process's imports,
~1 s of an emulated VM's CPU, ~0.1 s on real hardware): the worker holds the store (SQLite, in WAL
mode) open, and an SQLite connection must not cross a fork (SQLite's rule: its POSIX locks stay
the parent's). Closing it around each fork was tried: the worker, then without a connection for
an instant, can count the store unused and remove its WAL from under another process whose locks
SQLite no longer tracks (the test suite's own process, which had read the file directly)."""
import json
import os
import select
import signal
import subprocess
import sys
import time

from . import config, jobs
from .store import audit, connect, heartbeat, now_iso, tx

_stopping = False


def _stop(*_):
    global _stopping
    _stopping = True


def recover(db):
    """Jobs marked running whose process is gone (the worker, the service or the VM stopped under
    them): failed, said so. The engine left nothing half-made: its temporary databases are dropped
    by the next operation (cleanup_stale)."""
    with tx(db):
        for r in db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
            alive = False
            if r['pid']:
                try:
                    with open('/proc/%d/cmdline' % r['pid'], 'rb') as f:
                        alive = b'job-run' in f.read()
                except OSError:
                    alive = False
            if not alive:
                msg = 'interrompue (redémarrage du service ou du serveur) : rien n\'a été laissé à moitié fait ; relancez l\'opération'
                db.execute("UPDATE jobs SET state = 'failed', message = ?, error = ?, finished_at = ? WHERE id = ?",
                           ('Échec : ' + msg, json.dumps({'code': 'interrupted', 'french': msg}, ensure_ascii=False), now_iso(), r['id']))
                audit(db, r['actor'], 'teacher', 'tache.%s' % r['kind'], r['title'], 'échec', msg, r['ip'])
                if r['kind'] == 'class':
                    p = json.loads(r['params'])
                    db.execute("UPDATE classes SET status = 'failed' WHERE id = ? AND status = 'creating'", (p.get('class_id'),))
                elif r['kind'] == 'archive':
                    p = json.loads(r['params'])
                    db.execute("UPDATE classes SET status = 'active' WHERE id = ? AND status = 'archiving'", (p.get('class_id'),))


def clean_files():
    limit = time.time() - config.FILE_TTL_S
    for d in (config.DOWNLOADS, config.UPLOADS, config.TMP):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for f in names:
            p = os.path.join(d, f)
            try:
                if os.path.getmtime(p) < limit:
                    os.remove(p)
            except OSError:
                pass


def _wake_fifo():
    """The FIFO the web application writes to when it queues a job (jobs.wake), opened for reading
    and writing: with a writer always there (this one), select never sees an end of file."""
    try:
        os.mkfifo(config.WAKE_FIFO, 0o600)
    except FileExistsError:
        import stat
        if not stat.S_ISFIFO(os.lstat(config.WAKE_FIFO).st_mode):
            os.remove(config.WAKE_FIFO)
            os.mkfifo(config.WAKE_FIFO, 0o600)
    return os.open(config.WAKE_FIFO, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def main():
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # a job process's end (SIGCHLD) and the stop signals write to this pipe (Python's wake-up fd),
    # which the loop waits on with the FIFO
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    os.umask(0o077)
    for d in (config.UPLOADS, config.DOWNLOADS, config.TMP):
        os.makedirs(d, mode=0o700, exist_ok=True)
    wake = _wake_fifo()
    db = connect()
    from . import engine
    engine.use_console_role()
    recover(db)
    running = {}
    last_index = 0.0
    last_beat = 0.0
    last_sizes = 0.0
    sizes_due = True
    me = [sys.executable, os.path.abspath(sys.argv[0])]
    while not _stopping:
        # every 10 s, not each second: a write to the data disk (the web application counts the
        # worker alive for a minute, config.WORKER_STALE_S)
        if time.monotonic() - last_beat >= 10:
            heartbeat(db)
            last_beat = time.monotonic()
        for jid, proc in list(running.items()):
            if proc.poll() is not None:
                del running[jid]
                sizes_due = True
                if proc.returncode not in (0,):
                    # the job process died before recording its end (killed): say so
                    recover(db)
        busy = set()
        for r in db.execute("SELECT targets FROM jobs WHERE state = 'running'"):
            busy |= set(json.loads(r['targets']))
        if len(running) < config.MAX_JOBS:
            for r in db.execute("SELECT id, targets FROM jobs WHERE state = 'queued' ORDER BY id").fetchall():
                if len(running) >= config.MAX_JOBS:
                    break
                t = set(json.loads(r['targets']))
                if t & busy:
                    continue
                busy |= t
                running[r['id']] = subprocess.Popen(me + ['job-run', str(r['id'])], stdin=subprocess.DEVNULL)
                # wait until it is marked running (or gave up), so the next scan sees its targets as busy
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    s = db.execute('SELECT state FROM jobs WHERE id = ?', (r['id'],)).fetchone()['state']
                    if s != 'queued' or running[r['id']].poll() is not None:
                        break
                    time.sleep(0.05)
        # the databases' sizes the pages show: after each job, and every SIZES_EVERY_S for what
        # students change in Tryton meanwhile
        if sizes_due or time.time() - last_sizes > config.SIZES_EVERY_S:
            try:
                jobs.refresh_sizes(db)
            except Exception as e:
                from pgilib import log
                log('pgi-console-worker: sizes: %s' % e)
            sizes_due = False
            last_sizes = time.time()
        if time.time() - last_index > config.BACKUP_INDEX_EVERY_S and not running:
            try:
                jobs.refresh_backup_index(db)
            except Exception as e:
                from pgilib import log
                log('pgi-console-worker: backup index: %s' % e)
            clean_files()
            last_index = time.time()
        # until a job is queued (the FIFO), a job process ends or a stop signal comes (the signal
        # pipe), and at least once a second (heartbeat, sizes: config.WORKER_POLL_S)
        if not _stopping:
            ready, _, _ = select.select([wake, sig_r], [], [], config.WORKER_POLL_S)
            for fd in ready:
                _drain(fd)
    # stopping: the job processes get SIGTERM from systemd too (same control group) and record it
    for proc in running.values():
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    return 0
