"""The console's use of the image's database engine (pgidb.py: the one implementation behind
`pgi-db`, `pgi db` and this console), plus the two things the engine does not have yet:

1. running as a PostgreSQL role without superuser rights (use_console_role): the engine connects
   as "postgres"; the console connects as "pgi_console", a member of "tryton" with CREATEDB and
   nothing else. Tryton needs its tables owned by "tryton": membership makes the console an owner
   of every Tryton database (copy, rename, drop, dump, restore as "tryton"), and nothing more
   (no other role, no file access through the server, no configuration). Which teacher may act on
   which database is decided by the console, from its store, before anything reaches the engine.
2. resetting a database to its model (reset_to_model), in place, keeping its users and their
   passwords, after a dump of what it replaces: composed of the engine's own steps (locks, space
   check, dump, copy, neutralisation, users, swap).

Both are written here, in the smallest form, to be folded into the engine (a role setting; a
"reset" operation of pgi-db) when the two meet."""
import json
import os
import time

import pgidb
import pgilib

from . import config

_role_done = False


def use_console_role(role=None):
    """Points every connection the engine makes (psycopg2, pg_dump, pg_restore, pgilib's) at the
    console's role instead of the superuser."""
    global _role_done
    role = role or config.DB_ROLE
    if _role_done:
        return
    import psycopg2

    def _connect(db, autocommit=False):
        c = psycopg2.connect(dbname=db, user=role, host=pgidb.PG_HOST, port=pgidb.PG_PORT, connect_timeout=10,
                             application_name='pgi-console')
        c.autocommit = autocommit
        return c

    def connect(db='postgres'):
        c = pgilib._connections.get(db)
        if c is None or c.closed:
            c = _connect(db, autocommit=True)
            pgilib._connections[db] = c
        return c

    pgidb._connect = _connect
    pgidb.pg_args = lambda: ['-h', pgidb.PG_HOST, '-p', str(pgidb.PG_PORT), '-U', role]
    pgilib.connect = connect
    _role_done = True


def connect_readonly():
    """A connection for the web pages' reads (sizes, existence), as the console's role."""
    import psycopg2
    c = psycopg2.connect(dbname='postgres', user=config.DB_ROLE, host=pgidb.PG_HOST, port=pgidb.PG_PORT, connect_timeout=5,
                         application_name='pgi-console-web')
    c.autocommit = True
    return c


def sizes(conn, names):
    """{name: size in bytes} of those of `names` that exist."""
    if not names:
        return {}
    with conn.cursor() as cur:
        cur.execute('SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname = ANY(%s)', (list(names),))
        return dict(cur.fetchall())


def existing(conn, names):
    """Those of `names` that exist (the catalog only: no file is read, unlike sizes)."""
    if not names:
        return set()
    with conn.cursor() as cur:
        cur.execute('SELECT datname FROM pg_database WHERE datname = ANY(%s)', (list(names),))
        return {r[0] for r in cur.fetchall()}


def _users(cur, skip=('admin', pgidb.HEALTH_LOGIN)):
    cur.execute('SELECT login, name, password_hash FROM res_user WHERE login <> ALL(%s) AND active ORDER BY id', (list(skip),))
    return cur.fetchall()


def reset_to_model(name, model, close=True):
    """`name` made again from `model` (a fresh copy), in place: a dump of what it replaces is kept
    first (kind before-replace, restorable like any backup); its Tryton users (the student's, the
    teacher's, every one but admin) are put back with their password hashes, so the class sheet
    stays true; its pgi_meta (class, student, kind) is kept; the copy is neutralised like every
    teaching copy. Sessions on `name` are closed for the swap (the page has warned the teacher)."""
    pgidb.check_name(name)
    pgidb.require_database(name)
    pgidb.require_database(model)
    if name == model:
        raise pgidb.DbError('invalid', 'a database cannot be reset to itself', pgidb.INVALID)
    # (an engine without it: nothing to clean)
    getattr(pgidb, "cleanup_stale", lambda: None)()
    started = time.monotonic()
    with pgidb.Locks('reset %s' % name, exclusive=[name], shared=[model]):
        pgidb.check_space(pgidb.database_size(model) + pgidb.database_size(name) // 4, 'resetting %s' % name)
        with pgidb.session(name) as c, c.cursor() as cur:
            users = _users(cur)
            meta = pgidb.meta_get(cur) or {}
        kept = pgidb.dump_database(name, 'before-replace')
        tmp = pgidb.tmp_name('reset')
        try:
            how = pgidb.clone(model, tmp, close=close)
            with pgidb.session(tmp, role='tryton') as c, c.cursor() as cur:
                pgidb.set_admin_hash(cur)
                pgidb.neutralise(cur)
                pgidb.ensure_health_user(cur)
                factory = pgidb.UserFactory(cur)
                teacher = meta.get('teacher')
                for login, uname, phash in users:
                    uid = factory.find(login)
                    if uid is None:
                        factory.create(login, uname, phash, 'teacher' if login == teacher else 'student')
                    else:
                        cur.execute('UPDATE res_user SET password_hash = %s, active = true, write_uid = 0, write_date = CURRENT_TIMESTAMP '
                                    'WHERE id = %s', (phash, uid))
                cur.execute('DELETE FROM pgi_meta')
                keep = {k: v for k, v in meta.items() if k not in ('reset_from', 'reset_at', 'neutralised')}
                pgidb.meta_set(cur, **keep)
                pgidb.meta_set(cur, reset_from=model, reset_at=pgidb.iso(pgidb.now_utc()))
                pgidb.bump_caches(cur)
                summary = pgidb.summary_of(pgidb.meta_get(cur))
            closed = pgidb._swap(tmp, name, summary)
        except BaseException:
            pgidb.drop_quietly(tmp)
            raise
        if closed:
            # trytond's connections to the replaced database: released by the engine's logins, so
            # that the student's first request after the reset does not fail
            pgidb.release_trytond(name, closed)
    return {'database': name, 'model': model, 'kept': kept, 'users': [u[0] for u in users], 'method': how['method'],
            'closed_connections': closed, 'seconds': round(time.monotonic() - started, 2)}


# -- messages for teachers: the engine speaks English to technicians; the console speaks French

FRENCH = {
    'busy': 'la base est occupée par une autre opération ; réessayez quand elle sera terminée',
    'no_space': 'pas assez de place sur le disque de données du serveur : prévenez votre AMI',
    'exists': 'une base porte déjà ce nom',
    'invalid_name': 'nom de base invalide',
    'reserved_name': 'ce nom de base est réservé',
    'not_found': 'la base n\'existe pas (ou plus)',
    'not_tryton': 'ce n\'est pas une base Tryton',
    'invalid_dump': 'le fichier n\'est pas une sauvegarde PostgreSQL (format personnalisé de pg_dump)',
    'too_big': 'le fichier est trop volumineux',
    'other_series': 'la sauvegarde vient d\'une autre version de Tryton que celle du serveur',
    'missing_modules': 'la sauvegarde utilise des modules Tryton absents de ce serveur',
    'no_backup': 'sauvegarde introuvable',
    'checksum': 'la sauvegarde est endommagée (somme de contrôle) : non restaurée',
    'restore_failed': 'la restauration a échoué',
    'dump_failed': 'la sauvegarde a échoué',
    'copy_failed': 'la copie a échoué',
    'login_exists': 'le modèle contient déjà des utilisateurs portant les identifiants des élèves',
    'invalid_csv': 'la liste des élèves contient des lignes invalides',
    'not_configured': 'le serveur n\'est pas encore configuré (mot de passe administrateur Tryton) : prévenez votre AMI',
    'no_template': 'le modèle BTS est absent de cette image',
    'company': 'la société du modèle ne peut pas être renommée',
}


def french(e):
    """A teacher-facing message for an engine error (the engine's own words kept in the detail)."""
    if isinstance(e, pgidb.DbError):
        base = FRENCH.get(e.code)
        if e.code == 'no_space':
            d = e.details
            base += ' (%.1f %% utilisés, %.1f %% après l\'opération, limite %g %%)' % (d.get('used_pct') or 0, d.get('after_pct') or 0, d.get('limit_pct') or 90)
        return base or ('échec : %s' % e)
    return 'échec inattendu : %s' % (str(e)[-300:] or type(e).__name__)


def error_json(e):
    if isinstance(e, pgidb.DbError):
        return dict(e.as_json(), french=french(e))
    return {'code': 'failed', 'message': '%s: %s' % (type(e).__name__, str(e)[-500:]), 'french': french(e)}


def backup_index():
    """Every kept backup the engine can restore ({database: [entries]}), for the worker's index."""
    out = {}
    for e in pgidb.backups():
        out.setdefault(e['database'], []).append(e)
    return out


def json_dumps(v):
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)


def file_age_s(path):
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return None
