"""Accounts: teachers (made by the AMI, from the console's AMI page or `pgi-console teacher add`;
each sets their own password with a one-time code) and the AMI (no account here: the AMI logs in
with the SQL administrator login and password of its handoff, which PostgreSQL itself checks)."""
import re
import time
import unicodedata

from . import config, security
from .store import audit, now_iso, tx

EMAIL_RE = re.compile(r'^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$')


class AccountError(Exception):
    """code: invalid | exists | not_found | state; status: the CLI's exit status."""

    STATUS = {'invalid': 3, 'not_found': 4, 'exists': 5, 'state': 3}

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.status = self.STATUS.get(code, 1)


def check_name(name):
    name = (name or '').strip()
    if not name or len(name) > 120 or any(unicodedata.category(ch).startswith('C') for ch in name):
        raise AccountError('invalid', 'nom %r : de 1 à 120 caractères imprimables' % name)
    return name


def check_email(email):
    email = (email or '').strip().lower()
    if not EMAIL_RE.match(email) or '..' in email:
        raise AccountError('invalid', 'adresse électronique %r invalide' % email)
    return email


def _tryton_login(db, email):
    """The teacher's Tryton login in their classes' databases: prof.<local part of the e-mail>,
    unique among teachers (never a student's: students get prénom.nom)."""
    local = unicodedata.normalize('NFKD', email.split('@')[0])
    local = ''.join(ch for ch in local if not unicodedata.combining(ch)).lower()
    local = re.sub(r'[^a-z0-9._-]+', '.', local).strip('._-')[:40] or 'enseignant'
    base = 'prof.' + local
    login, n = base, 2
    while db.execute('SELECT 1 FROM accounts WHERE tryton_login = ?', (login,)).fetchone():
        login, n = '%s%d' % (base, n), n + 1
    return login


def public(row):
    """An account as shown and printed (never a hash)."""
    return {'id': row['id'], 'email': row['email'], 'name': row['name'], 'tryton_login': row['tryton_login'], 'status': row['status'],
            'created_at': row['created_at'], 'created_by': row['created_by'], 'password_set_at': row['password_set_at'],
            'last_login': row['last_login'],
            'setup_code_expires': (time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(row['setup_expires']))
                                   if row['setup_code_hash'] and row['setup_expires'] else None)}


def find(db, ident):
    """An account by e-mail or id."""
    if isinstance(ident, int) or (isinstance(ident, str) and ident.isdigit()):
        row = db.execute('SELECT * FROM accounts WHERE id = ?', (int(ident),)).fetchone()
    else:
        row = db.execute('SELECT * FROM accounts WHERE email = ?', ((ident or '').strip().lower(),)).fetchone()
    if row is None:
        raise AccountError('not_found', 'aucun compte enseignant %s' % ident)
    return row


def _new_code(db, account_id):
    code = security.new_code()
    db.execute('UPDATE accounts SET setup_code_hash = ?, setup_expires = ? WHERE id = ?',
               (security.code_hash(code), time.time() + config.SETUP_CODE_TTL_S, account_id))
    return code


def add_teacher(db, name, email, by, ip=None, role='ami'):
    """A pending teacher account and its one-time code (returned once, never stored in clear)."""
    name, email = check_name(name), check_email(email)
    with tx(db):
        if db.execute('SELECT 1 FROM accounts WHERE email = ?', (email,)).fetchone():
            raise AccountError('exists', 'un compte existe déjà pour %s' % email)
        cur = db.execute('INSERT INTO accounts (email, name, tryton_login, status, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)',
                         (email, name, _tryton_login(db, email), 'pending', now_iso(), by))
        code = _new_code(db, cur.lastrowid)
        audit(db, by, role, 'enseignant.creer', email, 'ok', 'code à usage unique émis', ip)
        row = find(db, cur.lastrowid)
    return public(row), code


def list_teachers(db):
    return [public(r) for r in db.execute('SELECT * FROM accounts ORDER BY name, email')]


def disable(db, ident, by, ip=None, role='ami'):
    with tx(db):
        row = find(db, ident)
        db.execute("UPDATE accounts SET status = 'disabled', setup_code_hash = NULL, setup_expires = NULL WHERE id = ?", (row['id'],))
        db.execute('DELETE FROM sessions WHERE account_id = ?', (row['id'],))
        audit(db, by, role, 'enseignant.desactiver', row['email'], 'ok', None, ip)
        return public(find(db, row['id']))


def enable(db, ident, by, ip=None, role='ami'):
    with tx(db):
        row = find(db, ident)
        status = 'active' if row['password_hash'] else 'pending'
        db.execute('UPDATE accounts SET status = ? WHERE id = ?', (status, row['id']))
        audit(db, by, role, 'enseignant.reactiver', row['email'], 'ok', None, ip)
        return public(find(db, row['id']))


def reset(db, ident, by, ip=None, role='ami'):
    """Forgets the password, closes the teacher's sessions and issues a new one-time code."""
    with tx(db):
        row = find(db, ident)
        db.execute("UPDATE accounts SET password_hash = NULL, password_set_at = NULL, status = 'pending' WHERE id = ?", (row['id'],))
        db.execute('DELETE FROM sessions WHERE account_id = ?', (row['id'],))
        code = _new_code(db, row['id'])
        audit(db, by, role, 'enseignant.reinitialiser', row['email'], 'ok', 'mot de passe effacé, nouveau code émis', ip)
        return public(find(db, row['id'])), code


def check_new_password(password, confirm, email=None):
    if password != confirm:
        raise AccountError('invalid', 'les deux mots de passe diffèrent')
    if len(password) < config.PASSWORD_MIN:
        raise AccountError('invalid', 'le mot de passe doit avoir au moins %d caractères' % config.PASSWORD_MIN)
    if len(password) > 200:
        raise AccountError('invalid', 'le mot de passe doit avoir au plus 200 caractères')
    if email and password.lower() in (email.lower(), email.split('@')[0].lower()):
        raise AccountError('invalid', 'le mot de passe ne doit pas être votre adresse')


def activate(db, email, code, password, confirm, ip=None):
    """Sets a teacher's password with their one-time code (then spent). Returns the account."""
    email = (email or '').strip().lower()
    row = db.execute('SELECT * FROM accounts WHERE email = ?', (email,)).fetchone()
    ok = (row is not None and row['status'] == 'pending' and row['setup_code_hash'] and row['setup_expires']
          and row['setup_expires'] > time.time() and security.same(row['setup_code_hash'], security.code_hash(code)))
    if not ok:
        raise AccountError('state', 'adresse ou code invalide, déjà utilisé ou expiré : demandez un nouveau code à votre AMI')
    check_new_password(password, confirm, email)
    h = security.hash_password(password)
    with tx(db):
        db.execute("UPDATE accounts SET password_hash = ?, password_set_at = ?, status = 'active', setup_code_hash = NULL, "
                   'setup_expires = NULL WHERE id = ? AND setup_code_hash = ?', (h, now_iso(), row['id'], row['setup_code_hash']))
        audit(db, email, 'teacher', 'compte.activer', email, 'ok', 'mot de passe choisi', ip)
    return find(db, row['id'])


def authenticate(db, email, password):
    """The active teacher account with this e-mail and password, or None (same time either way)."""
    email = (email or '').strip().lower()
    row = db.execute('SELECT * FROM accounts WHERE email = ?', (email,)).fetchone()
    ok, new_hash = security.verify_password(row['password_hash'] if row else None, password or '')
    if not ok or row['status'] != 'active':
        return None
    with tx(db):
        if new_hash:
            db.execute('UPDATE accounts SET password_hash = ? WHERE id = ?', (new_hash, row['id']))
        db.execute('UPDATE accounts SET last_login = ? WHERE id = ?', (now_iso(), row['id']))
    return row


def verify_ami(login, password):
    """The AMI's SQL administrator login and password (handoff), checked by PostgreSQL itself: a
    SCRAM login over TCP on loopback, as the AMI's own tools do. Only a role that may manage roles
    (pgi-configure's sql_admin: CREATEROLE) is an AMI. Returns True/False; raises when PostgreSQL
    cannot be reached (the page says so instead of "wrong password")."""
    import psycopg2
    if not login or not password or not re.match(r'^[a-z_][a-z0-9_-]{0,62}$', login) or login in ('postgres', 'tryton', config.DB_ROLE):
        return False
    try:
        # no TLS (sslmode=disable) nor GSSAPI on this loopback connection: they protect nothing
        # between two processes of one host, and a TLS handshake cost more than the SCRAM exchange
        # itself under software emulation (the AMI's login answered in 1.3 s)
        c = psycopg2.connect(host=config.PG_TCP_HOST, port=config.PG_TCP_PORT, dbname='postgres', user=login, password=password,
                             connect_timeout=10, application_name='pgi-console-ami-login', gssencmode='disable',
                             sslmode='disable' if config.PG_TCP_HOST in ('127.0.0.1', '::1', 'localhost') else 'require')
    except psycopg2.OperationalError as e:
        text = str(e)
        if 'password authentication failed' in text or 'no pg_hba.conf entry' in text or 'does not exist' in text:
            return False
        raise
    try:
        with c.cursor() as cur:
            cur.execute('SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user')
            r = cur.fetchone()
            return bool(r and r[0])
    finally:
        c.close()
