"""The console's web application (Flask, served by waitress on 127.0.0.1 behind nginx's TLS).

Security, in the order a request meets it:
- nginx: HTTPS only (port 80 redirects), the upload size limit;
- sessions: a random token in a cookie "__Host-pgi-console" (Secure, HttpOnly, SameSite=Strict,
  Path=/, no Domain), only its SHA-256 in the store; idle and absolute expiry; a new token at
  login (no fixation); all of a teacher's sessions end when the AMI disables or resets the account;
- CSRF: every POST carries the session's token (a hidden field), compared in constant time, and an
  Origin header, when the browser sends one, must be this server; otherwise 403 (and audited);
- logins (teacher, activation code, AMI): failures counted per login and per client address over
  a window; past the limit, refused without checking the password (429);
- isolation: a teacher reaches only the classes, databases, backups and jobs the store records as
  theirs: anything else answers 403 (audited), direct URLs included; the AMI pages need the AMI;
- every action is in the audit log (who, what, when, result, client address).
Pages are French, plain HTML (no script needed; one small script refreshes job progress), usable
with the keyboard alone (labels, headings, focus order, a skip link), from 320 px to desktop."""
import functools
import json
import os
import re
import threading
import time
import urllib.parse

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, send_file, url_for

from . import accounts, config, engine, jobs, security
from .store import audit, audit_rows, connect, meta_get, now_iso, sizes_get, tx

COOKIE = '__Host-pgi-console'
PREFIX = '/console'
HERE = os.path.dirname(os.path.abspath(__file__))

_local = threading.local()


def store():
    db = getattr(_local, 'db', None)
    if db is None:
        db = _local.db = connect()
    return db


def pg():
    """The web process's PostgreSQL connection (reads only: sizes, existence), per thread."""
    c = getattr(_local, 'pg', None)
    if c is None or c.closed:
        c = _local.pg = engine.connect_readonly()
    return c


def pg_exists(name):
    """Whether PostgreSQL has a database `name` (the catalog only), or None when it cannot say.
    Pages never ask PostgreSQL for sizes: pg_database_size reads every file of a database (tens
    of ms each under software emulation); they show what the worker measured (store.sizes_get)."""
    for _ in range(2):
        try:
            return name in engine.existing(pg(), [name])
        except Exception:
            _local.pg = None
    return None


def client_ip():
    return request.remote_addr or '?'


# ---------------------------------------------------------------------------------------------
# sessions


def _load_session():
    g.session = None
    g.account = None
    g.new_cookie = None
    token = request.cookies.get(COOKIE)
    if not token:
        return
    db = store()
    row = db.execute('SELECT * FROM sessions WHERE id_hash = ?', (security.token_hash(token),)).fetchone()
    now = time.time()
    if row is None or row['expires_at'] < now or (row['role'] != 'anon' and now - row['seen_at'] > config.SESSION_IDLE_S):
        if row is not None:
            db.execute('DELETE FROM sessions WHERE id_hash = ?', (row['id_hash'],))
        return
    if row['role'] == 'teacher':
        acc = db.execute('SELECT * FROM accounts WHERE id = ?', (row['account_id'],)).fetchone()
        if acc is None or acc['status'] != 'active':
            db.execute('DELETE FROM sessions WHERE id_hash = ?', (row['id_hash'],))
            return
        g.account = acc
    if now - row['seen_at'] > 60:
        db.execute('UPDATE sessions SET seen_at = ? WHERE id_hash = ?', (now, row['id_hash']))
    g.session = dict(row)


def _new_session(role, account_id=None, ami_login=None):
    """A new session (a fresh token: never the one used before logging in)."""
    db = store()
    if g.session:
        db.execute('DELETE FROM sessions WHERE id_hash = ?', (g.session['id_hash'],))
    token = security.new_token()
    now = time.time()
    life = config.ANON_SESSION_S if role == 'anon' else config.SESSION_MAX_S
    row = {'id_hash': security.token_hash(token), 'role': role, 'account_id': account_id, 'ami_login': ami_login,
           'csrf': security.new_token(), 'created_at': now, 'seen_at': now, 'expires_at': now + life}
    db.execute('INSERT INTO sessions (id_hash, role, account_id, ami_login, csrf, created_at, seen_at, expires_at) '
               'VALUES (:id_hash, :role, :account_id, :ami_login, :csrf, :created_at, :seen_at, :expires_at)', row)
    db.execute('DELETE FROM sessions WHERE expires_at < ?', (now,))
    g.session = row
    g.new_cookie = (token, life)
    return row


def csrf_token():
    """The current session's CSRF token (an anonymous session is made for login forms)."""
    if not g.session:
        _new_session('anon')
    return g.session['csrf']


def actor():
    if g.account is not None:
        return g.account['email']
    if g.session and g.session['role'] == 'ami':
        return 'ami:%s' % g.session['ami_login']
    return 'anonyme'


def role():
    return g.session['role'] if g.session else 'anon'


def deny(action, target, why):
    """403, in the audit log."""
    db = store()
    audit(db, actor(), role(), action, target, 'refusé', why, client_ip())
    abort(403)


def teacher_required(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        if g.account is None:
            if g.session and g.session['role'] == 'ami':
                deny('acces', request.path, 'page réservée aux enseignants')
            return redirect(url_for('login', suite=request.full_path if request.method == 'GET' else None))
        return fn(*a, **kw)
    return wrapper


def ami_required(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        if not g.session or g.session['role'] != 'ami':
            if g.account is not None:
                deny('acces', request.path, 'page réservée à l\'AMI')
            return redirect(url_for('ami_login'))
        return fn(*a, **kw)
    return wrapper


# ---------------------------------------------------------------------------------------------
# rate limiting


def _failures(login):
    db = store()
    since = time.time() - config.RATE_WINDOW_S
    per_login = db.execute('SELECT count(*), min(at) FROM login_failures WHERE login = ? AND at > ?', (login, since)).fetchone()
    per_ip = db.execute('SELECT count(*), min(at) FROM login_failures WHERE ip = ? AND at > ?', (client_ip(), since)).fetchone()
    return per_login, per_ip


def rate_limited(login):
    """Seconds to wait when this login or this address failed too often recently, else 0."""
    (nl, first_l), (ni, first_i) = _failures(login)
    waits = []
    if nl >= config.RATE_PER_LOGIN:
        waits.append(first_l + config.RATE_WINDOW_S - time.time())
    if ni >= config.RATE_PER_IP:
        waits.append(first_i + config.RATE_WINDOW_S - time.time())
    return max(1, int(max(waits))) if waits else 0


def record_failure(login):
    db = store()
    now = time.time()
    db.execute('INSERT INTO login_failures (at, ip, login) VALUES (?, ?, ?)', (now, client_ip(), login))
    db.execute('DELETE FROM login_failures WHERE at < ?', (now - 24 * 3600,))


def too_many(action, login, wait):
    audit(store(), login or 'anonyme', 'anon', action, login, 'refusé', 'trop de tentatives : attente %d s' % wait, client_ip())
    return render_template('error.html', title='Trop de tentatives', status=429,
                           message='Trop de tentatives échouées. Réessayez dans %d minute%s.' % ((wait + 59) // 60, 's' if wait > 60 else '')), 429


# ---------------------------------------------------------------------------------------------
# the application


def create_app():
    app = Flask(__name__, static_folder=os.path.join(HERE, 'static'), static_url_path=PREFIX + '/static',
                template_folder=os.path.join(HERE, 'templates'))
    app.config.update(MAX_CONTENT_LENGTH=config.UPLOAD_MAX_BYTES + (1 << 20), TEMPLATES_AUTO_RELOAD=False, SEND_FILE_MAX_AGE_DEFAULT=3600)
    app.json.ensure_ascii = False  # Flask ≥ 2.2 (Debian 12 and 13)
    app.jinja_env.globals.update(csrf_token=csrf_token, KINDS=jobs.KINDS)
    app.jinja_env.filters.update(size=human_size, date=human_date, stamp=human_stamp)

    @app.before_request
    def before():
        g.t0 = time.monotonic()
        _load_session()
        if request.method == 'POST':
            origin = request.headers.get('Origin')
            if origin and origin != 'null':
                o = urllib.parse.urlsplit(origin)
                if o.netloc != request.host:
                    deny('csrf', request.path, 'origine %s refusée' % origin)
            sent = request.form.get('csrf_token', '')
            if not g.session or not sent or not security.same(sent, g.session['csrf']):
                deny('csrf', request.path, 'jeton CSRF absent ou invalide')

    @app.after_request
    def after(resp):
        if g.get('new_cookie'):
            token, life = g.new_cookie
            resp.set_cookie(COOKIE, token, max_age=life, path='/', secure=True, httponly=True, samesite='Strict')
        resp.headers.setdefault('Content-Security-Policy', "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                                           "form-action 'self'; base-uri 'none'")
        resp.headers.setdefault('X-Content-Type-Options', 'nosniff')
        resp.headers.setdefault('Referrer-Policy', 'same-origin')
        resp.headers.setdefault('X-Frame-Options', 'DENY')
        if not request.path.startswith(PREFIX + '/static/'):
            resp.headers['Cache-Control'] = 'no-store'
        if 'server_ms' not in resp.headers and g.get('t0') is not None:
            resp.headers['Server-Timing'] = 'app;dur=%.1f' % ((time.monotonic() - g.t0) * 1000)
        return resp

    @app.errorhandler(403)
    def forbidden(e):
        return render_template('error.html', title='Accès refusé', status=403,
                               message='Cette page ou cette action ne vous est pas accessible.'), 403

    @app.errorhandler(404)
    def not_found(e):
        return render_template('error.html', title='Page introuvable', status=404, message='Cette page n\'existe pas.'), 404

    @app.errorhandler(413)
    def too_large(e):
        return render_template('error.html', title='Fichier trop volumineux', status=413,
                               message='Le fichier dépasse la taille autorisée (%s).' % human_size(config.UPLOAD_MAX_BYTES)), 413

    register_routes(app)
    return app


def human_size(n):
    if n is None:
        return '–'
    for unit in ('o', 'Ko', 'Mo', 'Go'):
        if n < 1024 or unit == 'Go':
            return ('%d %s' % (n, unit)) if unit == 'o' else ('%.1f %s' % (n, unit)).replace('.', ',')
        n /= 1024.0


def human_stamp(epoch):
    """Epoch seconds → '04/03/2026 10:12' (Paris time)."""
    if epoch is None:
        return '–'
    import datetime
    return human_date(datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))


_PARIS = []


def _paris():
    if not _PARIS:
        try:
            from zoneinfo import ZoneInfo
            _PARIS.append(ZoneInfo('Europe/Paris'))
        except Exception:
            _PARIS.append(None)
    return _PARIS[0]


def human_date(iso):
    """'2026-03-04T09:12:00Z' → '04/03/2026 10:12' (Paris time, as teachers read it).
    fromisoformat, not strptime: strptime compiles and runs a regular expression per call, which
    a page of audit lines or backups pays for each date under software emulation."""
    if not iso:
        return '–'
    import datetime
    try:
        d = datetime.datetime.fromisoformat(iso[:19]).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return iso
    tz = _paris()
    if tz is not None:
        d = d.astimezone(tz)
    return '%02d/%02d/%04d %02d:%02d' % (d.day, d.month, d.year, d.hour, d.minute)


def register_routes(app):
    R = PREFIX

    # -- health (pgi-health): no session, no detail beyond up/down
    @app.route(R + '/sante')
    def health():
        db = store()
        seen = meta_get(db, 'worker_seen')
        worker_ok = seen is not None and time.time() - seen < config.WORKER_STALE_S
        queued = db.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
        running = db.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0]
        body = {'ok': worker_ok, 'web': True, 'worker': worker_ok, 'worker_seen_s': None if seen is None else round(time.time() - seen, 1),
                'jobs': {'queued': queued, 'running': running}}
        return jsonify(body), 200 if worker_ok else 503

    @app.route(R)
    def root_noslash():
        return redirect(url_for('home'))

    @app.route(R + '/')
    def home():
        if g.session and g.session['role'] == 'ami':
            return redirect(url_for('ami_home'))
        if g.account is None:
            return redirect(url_for('login'))
        db = store()
        me = g.account['id']
        classes = db.execute('SELECT * FROM classes WHERE owner_id = ? ORDER BY status = \'archived\', created_at DESC', (me,)).fetchall()
        others = db.execute("SELECT * FROM databases WHERE owner_id = ? AND status = 'active' AND class_id IS NULL ORDER BY name", (me,)).fetchall()
        recent = db.execute('SELECT * FROM jobs WHERE owner_id = ? ORDER BY id DESC LIMIT 8', (me,)).fetchall()
        counts = {r['class_id']: r['n'] for r in db.execute(
            "SELECT class_id, count(*) n FROM databases WHERE owner_id = ? AND status = 'active' AND kind IN ('student', 'shared') GROUP BY class_id",
            (me,))}
        sizes, sizes_at = sizes_get(db, [d['name'] for d in others])
        return render_template('home.html', title='Mes classes', classes=classes, others=others, recent=[jobs.public(j) for j in recent],
                               counts=counts, sizes=sizes, sizes_at=sizes_at)

    # -- teacher login, activation, logout
    @app.route(R + '/connexion', methods=['GET', 'POST'])
    def login():
        if request.method == 'GET':
            if g.account is not None:
                return redirect(url_for('home'))
            return render_template('login.html', title='Connexion des enseignants', email='', error=None, suite=request.args.get('suite', ''))
        email = (request.form.get('email') or '').strip().lower()[:200]
        wait = rate_limited(email)
        if wait:
            return too_many('connexion', email, wait)
        acc = accounts.authenticate(store(), email, request.form.get('password') or '')
        if acc is None:
            record_failure(email)
            audit(store(), email or 'anonyme', 'anon', 'connexion', email, 'échec', 'adresse ou mot de passe incorrect', client_ip())
            return render_template('login.html', title='Connexion des enseignants', email=email, suite=request.form.get('suite', ''),
                                   error='Adresse ou mot de passe incorrect (ou compte non activé, ou désactivé).'), 401
        _new_session('teacher', account_id=acc['id'])
        g.account = acc
        audit(store(), acc['email'], 'teacher', 'connexion', acc['email'], 'ok', None, client_ip())
        suite = request.form.get('suite') or ''
        return redirect(suite if suite.startswith(R + '/') and not suite.startswith('//') else url_for('home'))

    @app.route(R + '/activer', methods=['GET', 'POST'])
    def activate():
        if request.method == 'GET':
            return render_template('activate.html', title='Activer mon compte', email=request.args.get('email', ''), error=None)
        email = (request.form.get('email') or '').strip().lower()[:200]
        wait = rate_limited(email)
        if wait:
            return too_many('compte.activer', email, wait)
        try:
            acc = accounts.activate(store(), email, request.form.get('code') or '', request.form.get('password') or '',
                                    request.form.get('confirm') or '', ip=client_ip())
        except accounts.AccountError as e:
            if e.code == 'state':
                record_failure(email)
            audit(store(), email or 'anonyme', 'anon', 'compte.activer', email, 'échec', str(e), client_ip())
            return render_template('activate.html', title='Activer mon compte', email=email, error=str(e)), 400
        _new_session('teacher', account_id=acc['id'])
        g.account = acc
        return redirect(url_for('home'))

    @app.route(R + '/deconnexion', methods=['POST'])
    def logout():
        if g.session:
            audit(store(), actor(), role(), 'deconnexion', None, 'ok', None, client_ip())
            store().execute('DELETE FROM sessions WHERE id_hash = ?', (g.session['id_hash'],))
            g.session = None
            g.account = None
        resp = redirect(url_for('login'))
        resp.delete_cookie(COOKIE, path='/', secure=True, httponly=True, samesite='Strict')
        return resp

    # -- AMI
    @app.route(R + '/ami/connexion', methods=['GET', 'POST'])
    def ami_login():
        if request.method == 'GET':
            return render_template('ami_login.html', title='Connexion de l\'AMI', login='pgi_admin', error=None)
        login = (request.form.get('login') or '').strip()[:64]
        wait = rate_limited('ami:' + login)
        if wait:
            return too_many('ami.connexion', 'ami:' + login, wait)
        try:
            ok = accounts.verify_ami(login, request.form.get('password') or '')
        except Exception as e:
            audit(store(), 'ami:' + login, 'anon', 'ami.connexion', login, 'échec', 'PostgreSQL injoignable : %s' % e, client_ip())
            return render_template('ami_login.html', title='Connexion de l\'AMI', login=login,
                                   error='Le serveur de bases de données ne répond pas : réessayez dans une minute.'), 503
        if not ok:
            record_failure('ami:' + login)
            audit(store(), 'ami:' + login, 'anon', 'ami.connexion', login, 'échec', 'identifiant ou mot de passe incorrect', client_ip())
            return render_template('ami_login.html', title='Connexion de l\'AMI', login=login,
                                   error='Identifiant ou mot de passe incorrect.'), 401
        _new_session('ami', ami_login=login)
        audit(store(), 'ami:' + login, 'ami', 'ami.connexion', login, 'ok', None, client_ip())
        return redirect(url_for('ami_home'))

    @app.route(R + '/ami/')
    @ami_required
    def ami_home():
        db = store()
        teachers = accounts.list_teachers(db)
        nclasses = {r[0]: r[1] for r in db.execute("SELECT owner_id, count(*) FROM classes WHERE status <> 'archived' GROUP BY owner_id")}
        tls = _tls_fingerprint()
        return render_template('ami_home.html', title='Comptes des enseignants', teachers=teachers, nclasses=nclasses, tls=tls,
                               issued=None, error=None, form={})

    @app.route(R + '/ami/enseignants', methods=['POST'])
    @ami_required
    def ami_add():
        db = store()
        form = {'name': request.form.get('name', ''), 'email': request.form.get('email', '')}
        try:
            acc, code = accounts.add_teacher(db, form['name'], form['email'], actor(), ip=client_ip())
        except accounts.AccountError as e:
            audit(db, actor(), 'ami', 'enseignant.creer', form['email'], 'échec', str(e), client_ip())
            return render_template('ami_home.html', title='Comptes des enseignants', teachers=accounts.list_teachers(db), nclasses={},
                                   tls=_tls_fingerprint(), issued=None, error=str(e), form=form), 400
        return render_template('ami_code.html', title='Code d\'activation', account=acc, code=code, link=_activation_link(acc['email']))

    @app.route(R + '/ami/enseignants/<int:aid>/<any(desactiver, reactiver, reinitialiser):what>', methods=['POST'])
    @ami_required
    def ami_change(aid, what):
        db = store()
        try:
            if what == 'desactiver':
                accounts.disable(db, aid, actor(), ip=client_ip())
            elif what == 'reactiver':
                accounts.enable(db, aid, actor(), ip=client_ip())
            else:
                acc, code = accounts.reset(db, aid, actor(), ip=client_ip())
                return render_template('ami_code.html', title='Nouveau code d\'activation', account=acc, code=code,
                                       link=_activation_link(acc['email']))
        except accounts.AccountError:
            abort(404)
        return redirect(url_for('ami_home'))

    @app.route(R + '/ami/journal')
    @ami_required
    def ami_audit():
        db = store()
        who = request.args.get('qui') or None
        before = request.args.get('avant', '')
        before = int(before) if before.isdigit() else None
        # one page of AUDIT_PAGE lines, then a link to the older ones: rendering 500 lines took
        # ~0.9 s under software emulation (the CLI's `pgi db audit` reads any number)
        rows = audit_rows(db, actor=who, before=before, limit=config.AUDIT_PAGE + 1)
        older = rows[config.AUDIT_PAGE - 1]['id'] if len(rows) > config.AUDIT_PAGE else None
        return render_template('ami_audit.html', title='Journal des actions', rows=rows[:config.AUDIT_PAGE], who=who, older=older,
                               page=config.AUDIT_PAGE, first=before is None)

    # -- classes
    @app.route(R + '/classes/nouvelle', methods=['GET'])
    @teacher_required
    def class_new():
        return render_template('class_new.html', title='Créer une classe', models=_models(), form={'mode': 'per-student', 'model': 'bts'},
                               errors=[], rows=[])

    @app.route(R + '/classes', methods=['POST'])
    @teacher_required
    def class_create():
        import pgidb
        db = store()
        f = request.form
        form = {'label': (f.get('label') or '').strip(), 'model': f.get('model') or 'bts', 'mode': f.get('mode') or 'per-student',
                'company': (f.get('company') or '').strip(), 'students': f.get('students') or ''}
        errors, rows = [], []
        upload = request.files.get('students_file')
        data = upload.read(4 << 20) if upload and upload.filename else form['students'].encode('utf-8')
        if not form['label'] or len(form['label']) > 60:
            errors.append('Nom de la classe : de 1 à 60 caractères.')
        if form['mode'] not in ('per-student', 'shared'):
            errors.append('Mode : une base par élève, ou une base partagée.')
        models = _models()
        if form['model'] != 'bts' and form['model'] not in [m['name'] for m in models]:
            # a database that is not the teacher's: refused as any other direct attempt
            deny('classe.creer', form['model'], 'modèle %s : pas une base de l\'enseignant' % form['model'])
        company = form['company'] or ('Société %s' % form['label'])
        try:
            pgidb.check_company_name(company)
        except pgidb.DbError:
            errors.append('Nom de la société : de 1 à 120 caractères imprimables.')
        if not data.strip():
            errors.append('Liste des élèves : collez-la ou choisissez un fichier CSV.')
        else:
            students, bad = pgidb.read_students(data)
            rows = [{'line': b['line'], 'message': _french_row(b['message'])} for b in bad]
            if not students and not rows:
                errors.append('Liste des élèves : aucun élève trouvé.')
        if errors or rows:
            return render_template('class_new.html', title='Créer une classe', models=models, form=form, errors=errors, rows=rows), 400
        prefix = _class_prefix(form['label'], form['mode'], students)
        planned = pgidb.plan_class([dict(s) for s in students], form['mode'], prefix, g.account['tryton_login'])
        targets = sorted({s['database'] for s in planned})
        model_db = jobs.free_name(prefix + '_modele', _taken) if form['model'] == 'bts' else form['model']
        os.makedirs(config.UPLOADS, mode=0o700, exist_ok=True)
        csv_path = os.path.join(config.UPLOADS, 'classe-%s-%s.csv' % (prefix, security.new_token()[:8]))
        with open(csv_path, 'wb') as out:
            out.write(data)
        with tx(db):
            cur = db.execute("INSERT INTO classes (owner_id, label, prefix, mode, model, company, status, teacher_login, created_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, 'creating', ?, ?)",
                             (g.account['id'], form['label'], prefix, form['mode'], form['model'], company if form['model'] == 'bts' else None,
                              g.account['tryton_login'], now_iso()))
            class_id = cur.lastrowid
        try:
            jid = jobs.enqueue(db, g.account['id'], actor(), 'class', 'Création de la classe %s' % form['label'],
                               targets + [model_db], {'class_id': class_id, 'csv': csv_path, 'model_db': model_db}, ip=client_ip())
        except jobs.Busy as b:
            db.execute('DELETE FROM classes WHERE id = ?', (class_id,))
            os.remove(csv_path)
            return redirect(url_for('job', jid=b.args[0]))
        return redirect(url_for('job', jid=jid))

    @app.route(R + '/classes/<int:cid>')
    @teacher_required
    def class_page(cid):
        db = store()
        cls = own_class(cid, 'classe.voir')
        dbs = db.execute("SELECT * FROM databases WHERE class_id = ? AND status = 'active' ORDER BY kind <> 'class-model', name", (cid,)).fetchall()
        students = {}
        for s in db.execute('SELECT * FROM students WHERE class_id = ? ORDER BY last_name, first_name', (cid,)):
            students.setdefault(s['database'], []).append(s)
        sizes, sizes_at = sizes_get(db, [d['name'] for d in dbs])
        last = {}
        for r in db.execute('SELECT database, max(date) d FROM backups_index GROUP BY database'):
            last[r['database']] = r['d']
        finals = []
        if cls['status'] == 'archived':
            finals = [dict(b, database=n) for n in _class_db_names(cid) for b in visible_backups(n) if b['kind'] == 'final']
        active_job = db.execute("SELECT * FROM jobs WHERE owner_id = ? AND state IN ('queued', 'running') ORDER BY id DESC",
                                (g.account['id'],)).fetchall()
        active_job = [j for j in active_job if set(json.loads(j['targets'])) & ({d['name'] for d in dbs} | {cls['model_db'] or ''})]
        return render_template('class.html', title='Classe %s' % cls['label'], cls=cls, dbs=dbs, students=students, sizes=sizes, sizes_at=sizes_at, last=last,
                               finals=finals, active=[jobs.public(j) for j in active_job])

    @app.route(R + '/classes/<int:cid>/fiche')
    @teacher_required
    def class_sheet(cid):
        db = store()
        cls = own_class(cid, 'classe.fiche')
        if cls['status'] not in ('active',):
            abort(404)
        rows = db.execute('SELECT * FROM students WHERE class_id = ? ORDER BY last_name, first_name', (cid,)).fetchall()
        students = [dict(r, password=security.unseal(r['password'])) for r in rows]
        teacher_pw = security.unseal(g.account['tryton_password']) if g.account['tryton_password'] else None
        audit(db, actor(), 'teacher', 'classe.fiche', cls['label'], 'ok', '%d élève(s)' % len(students), client_ip())
        sao = request.host_url.rstrip('/') + '/'
        return render_template('sheet.html', title='Fiche de la classe %s' % cls['label'], cls=cls, students=students, teacher_pw=teacher_pw,
                               sao=sao, printed=now_iso())

    @app.route(R + '/classes/<int:cid>/sauvegarder', methods=['POST'])
    @teacher_required
    def class_backup(cid):
        cls = own_class(cid, 'classe.sauvegarder')
        names = _class_db_names(cid, active=True)
        if not names:
            abort(404)
        return _start('backup', 'Sauvegarde de la classe %s' % cls['label'], names, {'databases': names, 'class_id': cid})

    @app.route(R + '/classes/<int:cid>/archiver', methods=['GET', 'POST'])
    @teacher_required
    def class_archive(cid):
        db = store()
        cls = own_class(cid, 'classe.archiver')
        if cls['status'] != 'active':
            abort(404)
        names = _class_db_names(cid, active=True, with_copies=False)
        if request.method == 'GET':
            return render_template('class_archive.html', title='Archiver la classe %s' % cls['label'], cls=cls, names=names, error=None)
        if (request.form.get('confirm') or '').strip() != cls['label']:
            return render_template('class_archive.html', title='Archiver la classe %s' % cls['label'], cls=cls, names=names,
                                   error='Tapez exactement le nom de la classe pour confirmer.'), 400
        resp = _start('archive', 'Archivage de la classe %s' % cls['label'], names + [cls['model_db'] or ''], {'class_id': cid})
        db.execute("UPDATE classes SET status = 'archiving' WHERE id = ? AND status = 'active'", (cid,))
        return resp

    # -- databases
    @app.route(R + '/bases/<name>/reinitialiser', methods=['GET', 'POST'])
    @teacher_required
    def db_reset(name):
        d = own_db(name, 'base.reinitialiser')
        model = _model_of(d)
        if model is None:
            return render_template('error.html', title='Réinitialisation impossible', status=409,
                                   message='La base %s n\'a pas de modèle dans la console (seules les bases d\'une classe en ont un).' % name), 409
        if request.method == 'GET':
            return render_template('db_reset.html', title='Réinitialiser la base %s' % name, d=d, model=model, error=None)
        if request.form.get('confirm') != 'oui':
            return render_template('db_reset.html', title='Réinitialiser la base %s' % name, d=d, model=model,
                                   error='Cochez la case pour confirmer.'), 400
        return _start('reset', 'Réinitialisation de %s' % name, [name, model], {'database': name, 'model': model})

    @app.route(R + '/bases/<name>/sauvegarder', methods=['POST'])
    @teacher_required
    def db_backup(name):
        own_db(name, 'base.sauvegarder')
        return _start('backup', 'Sauvegarde de %s' % name, [name], {'databases': [name]})

    @app.route(R + '/bases/<name>/restaurer', methods=['GET', 'POST'])
    @teacher_required
    def db_restore(name):
        d = own_db(name, 'base.restaurer', archived_ok=True)
        backups = visible_backups(name)
        active = d['status'] == 'active'
        if request.method == 'GET':
            return render_template('db_restore.html', title='Restaurer la base %s' % name, d=d, backups=backups, active=active, error=None,
                                   form={'mode': 'replace' if active else 'copy'})
        form = {'backup_id': request.form.get('backup_id') or '', 'mode': request.form.get('mode') or '',
                'new_name': (request.form.get('new_name') or '').strip(), 'confirm': (request.form.get('confirm') or '').strip()}
        error = None
        if form['backup_id'] not in [b['id'] for b in backups]:
            if any(r['id'] == form['backup_id'] for r in store().execute('SELECT id FROM backups_index WHERE database = ?', (name,))):
                deny('base.restaurer', '%s@%s' % (name, form['backup_id']), 'sauvegarde d\'avant la prise en charge de la base par cet enseignant')
            error = 'Choisissez une des sauvegardes de la liste.'
        elif form['mode'] == 'replace':
            if not active:
                error = 'Cette base n\'existe plus : restaurez-la en copie.'
            elif form['confirm'] != name:
                error = 'Pour remplacer la base, tapez son nom exact (%s).' % name
        elif form['mode'] == 'copy':
            if form['new_name'] and (not jobs.check_database_name(form['new_name']) or _taken(form['new_name'])):
                error = 'Nom de la copie : libre, en minuscules, chiffres et _, commençant par une lettre.'
        else:
            error = 'Choisissez : remplacer la base, ou en faire une copie.'
        if error:
            return render_template('db_restore.html', title='Restaurer la base %s' % name, d=d, backups=backups, active=active, error=error,
                                   form=form), 400
        targets = [name] + ([form['new_name']] if form['mode'] == 'copy' and form['new_name'] else [])
        return _start('restore', 'Restauration de %s (%s)' % (name, 'en place' if form['mode'] == 'replace' else 'en copie'), targets,
                      {'database': name, 'backup_id': form['backup_id'], 'mode': form['mode'], 'new_name': form['new_name'] or None,
                       'class_id': d['class_id']})

    @app.route(R + '/bases/<name>/telecharger', methods=['POST'])
    @teacher_required
    def db_download(name):
        backup_id = request.form.get('backup_id') or None
        own_db(name, 'base.telecharger', archived_ok=backup_id is not None)
        if backup_id and backup_id not in [b['id'] for b in visible_backups(name)]:
            deny('base.telecharger', '%s@%s' % (name, backup_id), 'sauvegarde non accessible à cet enseignant')
        return _start('download', 'Téléchargement de %s%s' % (name, ' (sauvegarde %s)' % backup_id if backup_id else ''), [name],
                      {'database': name, 'backup_id': backup_id})

    @app.route(R + '/bases/importer', methods=['GET', 'POST'])
    @teacher_required
    def db_import():
        limit = config.UPLOAD_MAX_BYTES
        if request.method == 'GET':
            return render_template('db_import.html', title='Créer une base depuis un fichier', limit=limit, error=None, form={})
        form = {'name': (request.form.get('name') or '').strip()}
        up = request.files.get('dump')
        error = None
        if not jobs.check_database_name(form['name']):
            error = 'Nom de la base : en minuscules, chiffres et _, commençant par une lettre (63 caractères au plus).'
        elif _taken(form['name']):
            error = 'Une base porte déjà ce nom : choisissez-en un autre.'
        elif not up or not up.filename:
            error = 'Choisissez le fichier de sauvegarde (.dump).'
        if error is None:
            os.makedirs(config.UPLOADS, mode=0o700, exist_ok=True)
            path = os.path.join(config.UPLOADS, 'import-%s.dump' % security.new_token()[:12])
            size = _save_upload(up, path, limit)
            if size is None:
                error = 'Le fichier dépasse la taille autorisée (%s).' % human_size(limit)
            else:
                with open(path, 'rb') as fh:
                    magic = fh.read(5)
                if magic != b'PGDMP':
                    error = 'Ce fichier n\'est pas une sauvegarde PostgreSQL au format de pg_dump (-Fc) : rien n\'a été créé.'
                elif not _space_for(size, path):
                    error = 'Pas assez de place sur le disque de données du serveur pour ce fichier : prévenez votre AMI.'
            if error:
                try:
                    os.remove(path)
                except OSError:
                    pass
        if error:
            audit(store(), actor(), 'teacher', 'base.importer', form['name'], 'échec', error, client_ip())
            return render_template('db_import.html', title='Créer une base depuis un fichier', limit=limit, error=error, form=form), 400
        return _start('import', 'Création de %s depuis %s' % (form['name'], up.filename[:80]), [form['name']], {'upload': path, 'name': form['name']})

    # -- jobs
    @app.route(R + '/taches/<int:jid>')
    @teacher_required
    def job(jid):
        j = own_job(jid)
        return render_template('job.html', title=j['title'], job=j, back=_job_back(j))

    @app.route(R + '/taches/<int:jid>.json')
    @teacher_required
    def job_json(jid):
        j = own_job(jid)
        return jsonify({k: j[k] for k in ('id', 'state', 'done', 'total', 'message')})

    @app.route(R + '/taches/<int:jid>/fichier')
    @teacher_required
    def job_file(jid):
        j = own_job(jid)
        if j['kind'] != 'download' or j['state'] != 'done':
            abort(404)
        path = os.path.join(config.DOWNLOADS, j['result']['file'])
        if not os.path.exists(path):
            return render_template('error.html', title='Fichier expiré', status=410,
                                   message='Ce fichier n\'est plus disponible (gardé 24 heures) : relancez le téléchargement.'), 410
        audit(store(), actor(), 'teacher', 'base.telecharger.fichier', j['result']['filename'], 'ok', None, client_ip())
        return send_file(path, as_attachment=True, download_name=j['result']['filename'], mimetype='application/octet-stream', max_age=0)


# ---------------------------------------------------------------------------------------------
# ownership (the console's isolation between teachers)


def own_class(cid, action):
    row = store().execute('SELECT * FROM classes WHERE id = ?', (cid,)).fetchone()
    if row is None:
        abort(404)
    if row['owner_id'] != g.account['id']:
        deny(action, 'classe %d' % cid, 'classe d\'un autre enseignant')
    return row


def own_db(name, action, archived_ok=False):
    """The teacher's record of database `name` (active, or with archived_ok the latest archived or
    dropped one); 403 when it is someone else's or nobody's in the console, 404 when it does not exist."""
    db = store()
    rows = db.execute('SELECT * FROM databases WHERE name = ? ORDER BY id DESC', (name,)).fetchall()
    mine = [r for r in rows if r['owner_id'] == g.account['id']]
    active = [r for r in mine if r['status'] == 'active']
    if active:
        return active[0]
    if mine and archived_ok:
        return mine[0]
    if rows or pg_exists(name):
        deny(action, name, 'base d\'un autre enseignant, ou hors de la console')
    abort(404)


def own_job(jid):
    row = store().execute('SELECT * FROM jobs WHERE id = ?', (jid,)).fetchone()
    if row is None:
        abort(404)
    if row['owner_id'] != g.account['id']:
        deny('tache.voir', 'tâche %d' % jid, 'tâche d\'un autre enseignant')
    return jobs.public(row)


def visible_backups(name):
    """The kept backups of `name` this teacher may restore: those made while the database was
    theirs (a name reused after another teacher's archive never shows that teacher's dumps)."""
    db = store()
    periods = [(r['since'], r['until']) for r in db.execute('SELECT since, until FROM databases WHERE name = ? AND owner_id = ?',
                                                             (name, g.account['id']))]
    out = []
    for b in db.execute('SELECT * FROM backups_index WHERE database = ? ORDER BY date DESC, id DESC', (name,)):
        if any(b['date'] and since <= b['date'] and (until is None or b['date'] <= until) for since, until in periods):
            out.append(dict(b))
    return out


def _class_db_names(cid, active=False, with_copies=True):
    sql = 'SELECT DISTINCT name FROM databases WHERE class_id = ?'
    if active:
        sql += " AND status = 'active'"
    if not with_copies:
        sql += " AND kind <> 'restore-copy'"
    return [r[0] for r in store().execute(sql + ' ORDER BY name', (cid,))]


def _model_of(d):
    if d['class_id'] is None or d['kind'] not in ('student', 'shared'):
        return None
    cls = store().execute('SELECT model_db FROM classes WHERE id = ?', (d['class_id'],)).fetchone()
    return cls['model_db'] if cls else None


def _models():
    """What a class can start from: the BTS template, or one of the teacher's own databases."""
    return [dict(r) for r in store().execute("SELECT name, kind FROM databases WHERE owner_id = ? AND status = 'active' ORDER BY name",
                                             (g.account['id'],))]


def _taken(name):
    """A database name is taken when PostgreSQL has it or a console job is about to make it."""
    if pg_exists(name):  # (PostgreSQL unreachable: the job's engine refuses a name that exists)
        return True
    if store().execute("SELECT 1 FROM databases WHERE name = ? AND status = 'active'", (name,)).fetchone():
        return True
    for r in store().execute("SELECT targets FROM jobs WHERE state IN ('queued', 'running')"):
        if name in json.loads(r['targets']):
            return True
    return False


def _class_prefix(label, mode, students):
    """A prefix from the class's name, free in PostgreSQL and in the console (BTS CG 1 → bts_cg_1)."""
    import pgidb
    base = re.sub(r'^[^a-z]+', '', pgidb._slug(label, '_'))[:24].rstrip('_') or 'classe'

    def taken(p):
        if store().execute('SELECT 1 FROM classes WHERE prefix = ?', (p,)).fetchone():
            return True
        planned = pgidb.plan_class([dict(s) for s in students], mode, p, g.account['tryton_login'])
        return any(_taken(n) for n in {s['database'] for s in planned} | {p + '_modele'})

    return jobs.free_name(base, taken)


def _french_row(msg):
    return {'the file is empty': 'le fichier est vide', 'no student in the file': 'aucun élève dans le fichier'}.get(
        msg, re.sub(r'^more than (\d+) students$', r'plus de \1 élèves', msg))


def _start(kind, title, targets, params):
    try:
        jid = jobs.enqueue(store(), g.account['id'], actor(), kind, title, [t for t in targets if t], params, ip=client_ip())
    except jobs.Busy as b:
        return redirect(url_for('job', jid=b.args[0], occupe=1))
    return redirect(url_for('job', jid=jid))


def _job_back(j):
    p = json.loads(store().execute('SELECT params FROM jobs WHERE id = ?', (j['id'],)).fetchone()['params'])
    if p.get('class_id'):
        return url_for('class_page', cid=p['class_id'])
    return url_for('home')


def _save_upload(up, path, limit):
    """Streams an upload to the data disk; None (and nothing kept) when it passes `limit`."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as out:
        while True:
            chunk = up.stream.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                out.close()
                os.remove(path)
                return None
            out.write(chunk)
    return size


def _space_for(size, path):
    """Room for the upload and the database it becomes (the engine checks again, precisely)."""
    import pgidb
    try:
        total, used = pgidb.disk_usage()
    except OSError:
        return True
    return total and 100.0 * (used + size * pgidb.dump_expansion(path)) / total <= pgidb.DISK_LIMIT_PCT


def _activation_link(email):
    return '%s%s/activer?email=%s' % (request.host_url.rstrip('/'), PREFIX, urllib.parse.quote(email))


def _tls_fingerprint():
    from pgilib import read_json
    return (read_json(config.TLS_JSON, {}) or {}).get('sha256')
