"""Jobs: the console's long operations (a class of thirty, a backup, a reset, a restore, a
download, an import, an archive) run outside any web request, in a process of their own started
by the worker (pgi-console-worker.service) from the job table of the store. A page shows a job's
progress and can be left: the job goes on, and the teacher's pages list it until it ends.

enqueue() is what the web application calls (it wakes the worker); run() is what
`pgi-console job-run ID` executes."""
import json
import os
import re
import shutil
import signal
import threading
import time

from . import config, engine, security
from .store import audit, connect, now_iso, tx

KINDS = {
    'class': 'Création de la classe',
    'backup': 'Sauvegarde',
    'reset': 'Réinitialisation',
    'restore': 'Restauration',
    'download': 'Préparation du téléchargement',
    'import': 'Création d\'une base depuis un fichier',
    'archive': 'Archivage de la classe',
}


class Busy(Exception):
    """A job already queued or running on one of the same databases."""


def enqueue(db, owner_id, actor, kind, title, targets, params, ip=None, role='teacher'):
    """A queued job (its id). Refused (Busy) when another job of the console is queued or running
    on one of `targets`: the teacher sees that one instead of starting a second."""
    assert kind in KINDS
    with tx(db):
        for r in db.execute("SELECT id, targets FROM jobs WHERE state IN ('queued', 'running')"):
            if set(json.loads(r['targets'])) & set(targets):
                raise Busy(r['id'])
        cur = db.execute('INSERT INTO jobs (owner_id, actor, kind, title, targets, params, state, message, ip, created_at) '
                         "VALUES (?, ?, ?, ?, ?, ?, 'queued', 'En attente', ?, ?)",
                         (owner_id, actor, kind, title, json.dumps(sorted(set(targets))), json.dumps(params), ip, now_iso()))
        audit(db, actor, role, 'tache.%s' % kind, title, 'en file', 'tâche %d' % cur.lastrowid, ip)
    wake()
    return cur.lastrowid


def wake():
    """Tells the worker a job is queued (a byte in its FIFO), so it starts it now rather than at
    its next scan. Never blocks and never fails: with no worker reading (ENXIO), no FIFO yet, or
    the FIFO already full of wake-ups, the worker finds the job within a second anyway."""
    import stat
    try:
        fd = os.open(config.WAKE_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b'j')
    except OSError:
        pass
    finally:
        os.close(fd)


def public(row):
    """A job as pages and JSON show it (no parameters: they may name files)."""
    return {'id': row['id'], 'kind': row['kind'], 'title': row['title'], 'state': row['state'], 'done': row['done'], 'total': row['total'],
            'message': row['message'], 'error': row['error'], 'result': json.loads(row['result']) if row['result'] else None,
            'created_at': row['created_at'], 'started_at': row['started_at'], 'finished_at': row['finished_at'],
            'targets': json.loads(row['targets'])}


class Context:
    """What a running job reports: progress (done/total and a sentence) in the store."""

    def __init__(self, db, job):
        self.db = db
        self.job = job

    def progress(self, done=None, total=None, message=None):
        sets, args = [], []
        for col, v in (('done', done), ('total', total), ('message', message)):
            if v is not None:
                sets.append('%s = ?' % col)
                args.append(v)
        if sets:
            self.db.execute('UPDATE jobs SET %s WHERE id = ?' % ', '.join(sets), args + [self.job['id']])


# ---------------------------------------------------------------------------------------------
# helpers


def _account(db, owner_id):
    return db.execute('SELECT * FROM accounts WHERE id = ?', (owner_id,)).fetchone()


def teacher_password(db, account):
    """The teacher's Tryton password (the same in all their databases), made on first use and kept
    encrypted in the store for the class sheets."""
    if account['tryton_password']:
        return security.unseal(account['tryton_password'])
    import pgidb
    pw = pgidb.gen_password(12)
    db.execute('UPDATE accounts SET tryton_password = ? WHERE id = ? AND tryton_password IS NULL', (security.seal(pw), account['id']))
    row = db.execute('SELECT tryton_password FROM accounts WHERE id = ?', (account['id'],)).fetchone()
    return security.unseal(row['tryton_password'])


def ensure_teacher_user(name, account, password):
    """The teacher's Tryton user in `name`, with the teacher's password (made, or its password set).
    That password is one teacher_password generated: hashed as the engine hashes the passwords it
    generates (pgidb.GENERATED_PASSWORD_ROUNDS)."""
    import pgidb
    with pgidb.session(name, role='tryton') as c, c.cursor() as cur:
        factory = pgidb.UserFactory(cur)
        uid = factory.find(account['tryton_login'])
        h = pgidb.generated_password_hash(password)
        if uid is None:
            factory.create(account['tryton_login'], account['name'], h, 'teacher')
        else:
            cur.execute('UPDATE res_user SET password_hash = %s, active = true, write_uid = 0, write_date = CURRENT_TIMESTAMP WHERE id = %s',
                        (h, uid))
            pgidb.bump_caches(cur, ['res_user._get_login'])


def register(db, name, owner_id, kind, class_id=None, student=None):
    """Records that `owner_id` owns database `name` from now on (the console's isolation rule)."""
    db.execute("UPDATE databases SET status = 'dropped', until = ? WHERE name = ? AND status = 'active'", (now_iso(), name))
    db.execute("INSERT INTO databases (name, owner_id, class_id, kind, student_login, status, since) VALUES (?, ?, ?, ?, ?, 'active', ?)",
               (name, owner_id, class_id, kind, student, now_iso()))


def free_name(base, taken_check):
    """base, or base2, base3…: the first name for which taken_check(name) is False (≤ 63 characters)."""
    base = base[:60].rstrip('_')
    name, n = base, 2
    while taken_check(name):
        name, n = '%s%d' % (base, n), n + 1
    return name


def refresh_backup_index(db):
    """The kept backups of every database the console has ever recorded (the web process cannot
    read the backup folders, which belong to root: it reads this index)."""
    names = {r[0] for r in db.execute('SELECT DISTINCT name FROM databases')}
    index = engine.backup_index()
    with tx(db):
        db.execute('DELETE FROM backups_index')
        for name, entries in index.items():
            if name not in names:
                continue
            for e in entries:
                v = e.get('verified') or {}
                db.execute('INSERT OR REPLACE INTO backups_index (database, id, kind, date, size, verified) VALUES (?, ?, ?, ?, ?, ?)',
                           (name, e['id'], e['kind'], e['date'], e.get('size'), 1 if v.get('ok') else (0 if v else None)))
        from .store import meta_set
        meta_set(db, 'backups_index_at', time.time())


def refresh_sizes(db, conn=None):
    """Measures the size of every database the console knows (active in its store) into the store,
    where the pages read them: the worker runs it after each job and every few minutes, never a
    page (pg_database_size reads every file of a database: seconds for a class of 30 under
    software emulation). Returns how many were measured."""
    from .store import sizes_put
    names = {r[0] for r in db.execute("SELECT name FROM databases WHERE status = 'active'")}
    names |= {r[0] for r in db.execute('SELECT name FROM db_sizes')}
    own = conn is None
    conn = conn or engine.connect_readonly()
    try:
        measured = engine.sizes(conn, sorted(names))
    finally:
        if own:
            conn.close()
    sizes_put(db, measured, names)
    return len(measured)


def _target_progress(ctx, names, base=0, total=None, every=1.0, stop=None):
    """While `stop` is not set: how many of `names` exist (the engine renames each database into
    place only when it is complete), as progress. From the catalog only (engine.existing): sizes
    would read every file of every database made so far each second (~1,500 each: a class of 30
    near its end, 45,000 stat calls a second on the VM the class is working on)."""
    conn = engine.connect_readonly()
    last = 0
    try:
        while not stop.wait(every):
            # written only when it changes
            n = len(engine.existing(conn, names))
            if n != last:
                ctx.progress(done=base + n)
                last = n
    finally:
        conn.close()


def _with_progress(fn, ctx, names, base):
    """Runs fn() while a thread reports the progress of `names`; returns its result or raises its
    error. fn runs in this (the main) thread: a SIGTERM (the worker or the VM stopping) raises
    where the engine is, which then drops what it had made before the job records its end."""
    stop = threading.Event()
    watcher = threading.Thread(target=_target_progress, args=(ctx, names, base), kwargs={'stop': stop}, daemon=True)
    watcher.start()
    try:
        return fn()
    finally:
        stop.set()
        # its last write done before the job writes its end through the same connection
        watcher.join(10)


# ---------------------------------------------------------------------------------------------
# the jobs


def job_class(db, ctx, job, p):
    import pgidb
    cls = db.execute('SELECT * FROM classes WHERE id = ?', (p['class_id'],)).fetchone()
    account = _account(db, job['owner_id'])
    with open(p['csv'], 'rb') as f:
        students, errors = pgidb.read_students(f.read())
    if errors:
        raise pgidb.DbError('invalid_csv', 'bad rows', pgidb.INVALID, rows=errors)
    planned = pgidb.plan_class([dict(s) for s in students], cls['mode'], cls['prefix'], account['tryton_login'])
    targets = sorted({s['database'] for s in planned})
    total = len(targets) + (1 if cls['model'] == 'bts' else 0)
    ctx.progress(0, total, 'Préparation')
    password = teacher_password(db, account)
    made_model = None
    made = []
    try:
        if cls['model'] == 'bts':
            model_db = p['model_db']
            ctx.progress(message='Création du modèle de la classe (%s) depuis le modèle BTS' % model_db)
            pgidb.create(model_db, company=cls['company'], login_check=False)
            made_model = model_db
            ensure_teacher_user(model_db, account, password)
            with tx(db):
                register(db, model_db, account['id'], 'class-model', class_id=cls['id'])
                db.execute('UPDATE classes SET model_db = ? WHERE id = ?', (model_db, cls['id']))
            ctx.progress(done=1)
        else:
            model_db = cls['model']
            ensure_teacher_user(model_db, account, password)
        ctx.progress(message='Copie du modèle pour %d base%s' % (len(targets), 's' if len(targets) > 1 else ''))
        base = 1 if made_model else 0
        out = _with_progress(lambda: pgidb.make_class(model_db, p['csv'], mode=cls['mode'], prefix=cls['prefix'], teacher=account['tryton_login'],
                                                      label=cls['label']), ctx, targets, base)
        made = [d['name'] for d in out['databases']]
        with tx(db):
            for d in out['databases']:
                register(db, d['name'], account['id'], 'shared' if cls['mode'] == 'shared' else 'student', class_id=cls['id'],
                         student=d['students'][0]['login'] if cls['mode'] == 'per-student' else None)
                for s in d['students']:
                    db.execute('INSERT INTO students (class_id, line, last_name, first_name, class_code, login, database, password) '
                               'VALUES (?, ?, ?, ?, ?, ?, ?, ?)', (cls['id'], s['line'], s['last_name'], s['first_name'], s['class'], s['login'],
                                                                   d['name'], security.seal(s['password'])))
            db.execute("UPDATE classes SET status = 'active', model_db = ? WHERE id = ?", (model_db, cls['id']))
    except BaseException:
        # all or nothing here too: the students' databases the engine made but the store does not
        # record yet (a SIGTERM between the engine's end and that record) go with the class's model
        dropped = made + ([made_model] if made_model else [])
        for name in dropped:
            pgidb.drop_quietly(name)
        with tx(db):
            for name in dropped:
                db.execute("UPDATE databases SET status = 'dropped', until = ? WHERE name = ? AND status = 'active'", (now_iso(), name))
            db.execute("UPDATE classes SET status = 'failed' WHERE id = ?", (cls['id'],))
        raise
    ctx.progress(done=total, message='Classe créée')
    try:
        os.remove(p['csv'])
    except OSError:
        pass
    return {'class_id': cls['id'], 'databases': [d['name'] for d in out['databases']], 'model': model_db, 'seconds': out['seconds'],
            **({'notice': out['notice']} if out.get('notice') else {})}


def job_backup(db, ctx, job, p):
    import pgidb
    names = p['databases']
    ctx.progress(0, len(names), 'Sauvegarde')
    done = []
    for n, name in enumerate(names):
        ctx.progress(n, None, 'Sauvegarde de %s' % name)
        e = pgidb.backup([name])[0]
        done.append({'database': name, 'id': e['id'], 'size': e['size']})
    ctx.progress(len(names), None, 'Sauvegarde terminée')
    return {'backups': done}


def job_reset(db, ctx, job, p):
    ctx.progress(0, 3, 'Sauvegarde de la base actuelle, puis copie du modèle %s' % p['model'])
    out = engine.reset_to_model(p['database'], p['model'])
    ctx.progress(3, None, 'Base réinitialisée')
    return {'database': out['database'], 'model': out['model'], 'kept': out['kept']['id'], 'closed_connections': out['closed_connections']}


def job_restore(db, ctx, job, p):
    import pgidb
    ctx.progress(0, 2, 'Restauration de la sauvegarde %s' % p['backup_id'])
    if p['mode'] == 'replace':
        out = pgidb.restore(p['database'], p['backup_id'], replace=True)
    else:
        out = pgidb.restore(p['database'], p['backup_id'], as_name=p.get('new_name'))
        account = _account(db, job['owner_id'])
        try:
            ensure_teacher_user(out['database'], account, teacher_password(db, account))
        finally:
            with tx(db):
                register(db, out['database'], job['owner_id'], 'restore-copy', class_id=p.get('class_id'))
    ctx.progress(2, None, 'Restauration terminée')
    return {'database': out['database'], 'from': out['from'], 'replaced': out['replaced'],
            'kept': out['kept']['id'] if out.get('kept') else None}


def job_download(db, ctx, job, p):
    import pgidb
    os.makedirs(config.DOWNLOADS, mode=0o700, exist_ok=True)
    dest = os.path.join(config.DOWNLOADS, 'job-%d.dump' % job['id'])
    if p.get('backup_id'):
        ctx.progress(0, 1, 'Copie de la sauvegarde %s' % p['backup_id'])
        entry = pgidb._find_backup(p['database'], p['backup_id'])
        if pgidb.sha256_file(entry['path']) != entry['sha256']:
            raise pgidb.DbError('checksum', 'backup %s is damaged' % entry['id'], pgidb.INVALID)
        shutil.copyfile(entry['path'], dest + '.partial')
        os.chmod(dest + '.partial', 0o600)
        os.rename(dest + '.partial', dest)
        stamp = (entry['date'] or '')[:16].replace('-', '').replace(':', '').replace('T', '-')
    else:
        ctx.progress(0, 1, 'Sauvegarde de %s pour le téléchargement' % p['database'])
        out = pgidb.export(p['database'], out=dest)
        try:
            os.remove(out['manifest'])
        except OSError:
            pass
        stamp = out['created_at'][:16].replace('-', '').replace(':', '').replace('T', '-')
    ctx.progress(1, None, 'Fichier prêt')
    return {'file': os.path.basename(dest), 'size': os.path.getsize(dest), 'filename': '%s-%s.dump' % (p['database'], stamp)}


def job_import(db, ctx, job, p):
    import pgidb
    path = p['upload']
    try:
        ctx.progress(0, 2, 'Vérification du fichier')
        info = pgidb.inspect_dump(path)
        ctx.progress(1, None, 'Création de la base %s' % p['name'])
        out = pgidb.import_(path, p['name'])
        account = _account(db, job['owner_id'])
        try:
            ensure_teacher_user(p['name'], account, teacher_password(db, account))
        finally:
            with tx(db):
                register(db, p['name'], job['owner_id'], 'import')
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    ctx.progress(2, None, 'Base créée')
    return {'database': out['database'], 'modules': info['modules'], 'size': info['size']}


def job_archive(db, ctx, job, p):
    import pgidb
    cls = db.execute('SELECT * FROM classes WHERE id = ?', (p['class_id'],)).fetchone()
    names = [r['name'] for r in db.execute("SELECT name FROM databases WHERE class_id = ? AND status = 'active' AND kind <> 'restore-copy' "
                                           'ORDER BY kind = \'class-model\', name', (cls['id'],))]
    ctx.progress(0, len(names), 'Archivage')
    finals = []
    try:
        for n, name in enumerate(names):
            ctx.progress(n, None, 'Dernière sauvegarde puis suppression de %s' % name)
            if pgidb.exists(name):
                out = pgidb.drop(name)
                finals.append({'database': name, 'final_backup': out['final_backup']['id']})
            with tx(db):
                db.execute("UPDATE databases SET status = 'archived', until = ? WHERE name = ? AND status = 'active'", (now_iso(), name))
    except BaseException:
        with tx(db):
            db.execute("UPDATE classes SET status = 'active' WHERE id = ?", (cls['id'],))
        raise
    with tx(db):
        db.execute("UPDATE classes SET status = 'archived', archived_at = ? WHERE id = ?", (now_iso(), cls['id']))
    ctx.progress(len(names), None, 'Classe archivée')
    return {'class_id': cls['id'], 'archived': finals}


HANDLERS = {'class': job_class, 'backup': job_backup, 'reset': job_reset, 'restore': job_restore, 'download': job_download,
            'import': job_import, 'archive': job_archive}


def _terminate(*_):
    # once: what follows is the job undoing what it made (the engine's except and finally
    # blocks), which a second signal must not cut short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(143)


def run(job_id):
    """Runs one queued job to its end (`pgi-console job-run ID`, started by the worker). Exit 0 when
    the job ran (done or failed: the store says which), 1 when it could not be started."""
    engine.use_console_role()
    # SIGTERM (the worker or the VM stopping): unwind, so that the engine drops what it was making
    signal.signal(signal.SIGTERM, _terminate)
    os.umask(0o077)
    db = connect()
    with tx(db):
        job = db.execute('SELECT * FROM jobs WHERE id = ?', (job_id,)).fetchone()
        if job is None or job['state'] != 'queued':
            return 1
        db.execute("UPDATE jobs SET state = 'running', started_at = ?, pid = ?, message = 'Démarrage' WHERE id = ?",
                   (now_iso(), os.getpid(), job_id))
    job = db.execute('SELECT * FROM jobs WHERE id = ?', (job_id,)).fetchone()
    ctx = Context(db, job)
    params = json.loads(job['params'])
    actor, title = job['actor'], job['title']
    try:
        result = HANDLERS[job['kind']](db, ctx, job, params)
    except BaseException as e:  # noqa: B902: every failure is recorded, then re-raised for exits
        err = engine.error_json(e) if not isinstance(e, (SystemExit, KeyboardInterrupt)) else {
            'code': 'interrupted', 'message': 'interrupted', 'french': 'interrompue (arrêt du service ou du serveur) : rien n\'a été laissé à moitié fait'}
        with tx(db):
            db.execute("UPDATE jobs SET state = 'failed', error = ?, message = ?, finished_at = ? WHERE id = ?",
                       (json.dumps(err, ensure_ascii=False), 'Échec : ' + err['french'], now_iso(), job_id))
            audit(db, actor, 'teacher', 'tache.%s' % job['kind'], title, 'échec', '%s (%s)' % (err['french'], err.get('message', '')), job['ip'])
        _refresh_quietly(db)
        if isinstance(e, (SystemExit, KeyboardInterrupt)):
            raise
        return 0
    with tx(db):
        db.execute("UPDATE jobs SET state = 'done', result = ?, finished_at = ? WHERE id = ?",
                   (engine.json_dumps(result), now_iso(), job_id))
        audit(db, actor, 'teacher', 'tache.%s' % job['kind'], title, 'ok', _summary(job['kind'], result), job['ip'])
    _refresh_quietly(db)
    return 0


def _refresh_quietly(db):
    try:
        refresh_backup_index(db)
    except Exception as e:  # the index is refreshed again by the worker; the job's result stands
        from pgilib import log
        log('pgi-console: backup index not refreshed: %s' % e)


def _summary(kind, r):
    if kind == 'class':
        return '%d base(s) : %s' % (len(r['databases']), ', '.join(r['databases'][:40]))
    if kind == 'backup':
        return ', '.join('%s → %s' % (b['database'], b['id']) for b in r['backups'])
    if kind == 'reset':
        return '%s depuis %s ; ancienne version gardée : %s' % (r['database'], r['model'], r['kept'])
    if kind == 'restore':
        return '%s depuis %s%s' % (r['database'], r['from']['id'], ' (remplacée ; ancienne version gardée : %s)' % r['kept'] if r['replaced'] else ' (copie)')
    if kind == 'download':
        return '%s (%d octets)' % (r['filename'], r['size'])
    if kind == 'import':
        return '%s (%d octets)' % (r['database'], r['size'])
    if kind == 'archive':
        return ', '.join('%s → %s' % (a['database'], a['final_backup']) for a in r['archived'])
    return None


def check_database_name(name):
    """A name a teacher may give a new database (the engine checks it again)."""
    import pgidb
    if not isinstance(name, str) or not pgidb.NAME_RE.match(name) or name.startswith(pgidb.RESERVED_PREFIXES):
        return False
    return not re.match(r'^(postgres|template\d*)$', name)
