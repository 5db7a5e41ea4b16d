"""The teachers' console's rules, natively: the image's web application (Flask's test client, in
this process), its jobs (run here, as the worker runs them) and command line, against a throwaway
PostgreSQL cluster and trytond (consolelab.ConsoleLab, without nginx and the services). The browser
scenario is console-browser.test.ts; this suite covers what a browser does not reach: every route
against another teacher, every form without its token, rate limits, accounts from the command line,
the database role's rights, imports, archives, and which backups a teacher may see.

Run by console.test.ts (vitest), or alone: cd test/unit/console && python3 -m unittest -v test_console
"""
import io
import json
import os
import re
import sys
import time
import unittest

import consolelab

LAB = None


def setUpModule():
    global LAB, accounts, config, jobs, security, store, web, pgidb, worker
    why = consolelab.missing_prerequisites()
    if why:
        raise unittest.SkipTest(why)
    LAB = consolelab.ConsoleLab()
    LAB.start(services=False)
    os.environ.update(LAB.env())
    sys.path.insert(0, consolelab.LIB)
    import pgidb  # noqa: F401
    from console import accounts, config, jobs, security, store, web, worker  # noqa: F401
    globals().update(pgidb=pgidb, accounts=accounts, config=config, jobs=jobs, security=security, store=store, web=web, worker=worker)


def tearDownModule():
    if LAB:
        LAB.stop()


CSV = 'Nom;Prénom;Classe\nDUPONT;Léa;{label}\nMARTIN;Hugo;{label}\n'


class Client:
    """A browser, as far as the application can tell: cookies, forms with their CSRF token."""

    def __init__(self, app, ip='127.0.0.1'):
        self.c = app.test_client()
        self.ip = ip

    def get(self, path, **kw):
        return self.c.get(path, base_url='https://localhost', environ_base={'REMOTE_ADDR': self.ip}, **kw)

    def post(self, path, data=None, token=True, **kw):
        data = dict(data or {})
        if token is True:
            data['csrf_token'] = self.token()
        elif token:
            data['csrf_token'] = token
        return self.c.post(path, data=data, base_url='https://localhost', environ_base={'REMOTE_ADDR': self.ip}, **kw)

    def token(self, page='/console/connexion'):
        html = self.get(page).get_data(as_text=True)
        m = re.search(r'name="csrf_token" value="([^"]+)"', html)
        if m is None:
            html = self.get('/console/').get_data(as_text=True)
            m = re.search(r'name="csrf_token" value="([^"]+)"', html)
        return m.group(1)


class ConsoleTest(unittest.TestCase):
    n = 0

    @classmethod
    def setUpClass(cls):
        cls.app = web.create_app()
        cls.app.testing = True
        cls.db = store.connect()


    def teacher(self, name=None):
        """A new active teacher, logged in: (client, email, password)."""
        ConsoleTest.n += 1
        email = 'prof%d.%s@lycee-test.fr' % (ConsoleTest.n, int(time.time() * 1000) % 100000)
        _, code = accounts.add_teacher(self.db, name or 'Prof %d' % ConsoleTest.n, email, 'test')
        c = Client(self.app)
        r = c.post('/console/activer', {'email': email, 'code': code, 'password': 'Password-%d-ok' % ConsoleTest.n,
                                         'confirm': 'Password-%d-ok' % ConsoleTest.n})
        self.assertEqual(r.status_code, 302, r.get_data(as_text=True)[-500:])
        return c, email, 'Password-%d-ok' % ConsoleTest.n

    def run_jobs(self):
        """What the worker does: each queued job, in order (here, in this process)."""
        for r in self.db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id").fetchall():
            jobs.run(r['id'])

    def job_of(self, response):
        m = re.search(r'/console/taches/(\d+)', response.headers.get('Location', ''))
        self.assertIsNotNone(m, 'no job: %s %s' % (response.status_code, response.get_data(as_text=True)[-800:]))
        return int(m.group(1))

    def finished(self, jid):
        self.run_jobs()
        row = self.db.execute('SELECT * FROM jobs WHERE id = ?', (jid,)).fetchone()
        self.assertEqual(row['state'], 'done', row['error'])
        return json.loads(row['result'])

    def make_class(self, c, label):
        r = c.post('/console/classes', {'label': label, 'students': CSV.format(label=label), 'model': 'bts', 'mode': 'per-student'})
        out = self.finished(self.job_of(r))
        return out['class_id'], out['databases']


class TestConsole(ConsoleTest):
    def test_role_has_no_superuser_rights(self):
        """The console's PostgreSQL role: member of tryton, CREATEDB, nothing else, and refused
        what only a superuser may do."""
        rows = LAB.psql("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, pg_has_role('pgi_console', 'tryton', 'member') "
                        "FROM pg_roles WHERE rolname = 'pgi_console'")
        self.assertEqual(rows, [['f', 't', 'f', 'f', 'f', 't']])
        import psycopg2
        c = psycopg2.connect(dbname='postgres', user='pgi_console', host=LAB.sock, port=LAB.pg_port)
        c.autocommit = True
        for sql in ("CREATE ROLE intruder LOGIN", "ALTER ROLE pgi_console SUPERUSER", "ALTER SYSTEM SET fsync = off",
                    "COPY (SELECT 1) TO PROGRAM 'true'", "SELECT pg_read_file('postgresql.conf')", "SELECT rolpassword FROM pg_authid",
                    "DROP DATABASE postgres"):
            with self.subTest(sql=sql), c.cursor() as cur:
                with self.assertRaises(psycopg2.Error):
                    cur.execute(sql)
        c.close()
        # the engine, as this role, did make the class databases: owned by tryton (Tryton needs that)
        t, _, _ = self.teacher()
        _, dbs = self.make_class(t, 'Role')
        owners = LAB.psql("SELECT DISTINCT pg_get_userbyid(datdba) FROM pg_database WHERE datname IN (%s)" % ', '.join("'%s'" % d for d in dbs))
        self.assertEqual(owners, [['tryton']])
        apps = LAB.psql("SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name LIKE 'pgi-console%'")
        self.assertNotIn(['postgres'], apps)

    def test_class_from_the_template_and_its_model(self):
        """A class from the BTS template: each student's database carries the class's metadata
        (and in its comment), its scheduled actions off, the teacher's and its student's users; the
        class's own model keeps its own metadata and the teacher's user only. When the class fails
        (a student's database name taken meanwhile), neither the model nor any copy is left."""
        t, email, _ = self.teacher()
        r = t.post('/console/classes', {'label': 'Gabarit', 'students': CSV.format(label='Gabarit'), 'model': 'bts', 'mode': 'per-student'})
        jid = self.job_of(r)
        params = json.loads(self.db.execute('SELECT params FROM jobs WHERE id = ?', (jid,)).fetchone()['params'])
        model = params['model_db']
        out = self.finished(jid)
        self.assertEqual(out['model'], model)
        login = self.db.execute('SELECT tryton_login FROM accounts WHERE email = ?', (email,)).fetchone()['tryton_login']
        meta = lambda db: dict(LAB.psql('SELECT key, value FROM pgi_meta', db))
        comment = lambda db: json.loads(LAB.psql("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '%s'" % db)[0][0])['pgi']
        students = dict(self.db.execute('SELECT database, login FROM students WHERE class_id = ?', (out['class_id'],)).fetchall())
        self.assertEqual(sorted(students), sorted(out['databases']))
        for db in out['databases']:
            m = meta(db)
            self.assertEqual((m['kind'], m['class_label'], m['model'], m['teacher'], m['student']), ('class-student', 'Gabarit', model, login, students[db]))
            self.assertIn('neutralised', m)
            self.assertEqual(comment(db), {'kind': 'class-student', 'class': 'Gabarit', 'student': students[db], 'login_check': False})
            self.assertEqual(LAB.psql('SELECT count(*) FROM ir_cron WHERE active', db), [['0']])
            self.assertEqual(LAB.psql("SELECT login FROM res_user WHERE login NOT IN ('root', 'admin', 'pgi_health') ORDER BY login", db),
                             sorted([[login], [students[db]]]))
        m = meta(model)
        self.assertEqual(m['kind'], 'create')
        self.assertFalse({'class_label', 'student', 'neutralised'} & set(m), m)
        self.assertEqual(comment(model)['kind'], 'create')
        self.assertEqual(LAB.psql("SELECT login FROM res_user WHERE login NOT IN ('root', 'admin', 'pgi_health')", model), [[login]])
        self.assertEqual(LAB.psql("SELECT datistemplate FROM pg_database WHERE datname = '%s'" % model), [['f']])
        self.assertEqual(LAB.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgi\\_tmp\\_%'"), [['0']])
        # a student's database name taken between the request and the job: the job fails and
        # leaves nothing (neither the model it was making nor any copy)
        r = t.post('/console/classes', {'label': 'Bloquee', 'students': CSV.format(label='Bloquee'), 'model': 'bts', 'mode': 'per-student'})
        jid = self.job_of(r)
        job = self.db.execute('SELECT params, targets FROM jobs WHERE id = ?', (jid,)).fetchone()
        params = json.loads(job['params'])
        model = params['model_db']
        blocker = sorted(n for n in json.loads(job['targets']) if n != model)[0]
        LAB.psql('CREATE DATABASE %s' % blocker)
        try:
            before = {r[0] for r in LAB.psql('SELECT datname FROM pg_database')}
            self.run_jobs()
            row = self.db.execute('SELECT state, error FROM jobs WHERE id = ?', (jid,)).fetchone()
            self.assertEqual(row['state'], 'failed')
            self.assertEqual(json.loads(row['error'])['code'], 'exists', row['error'])
            self.assertEqual({r[0] for r in LAB.psql('SELECT datname FROM pg_database')}, before)
            self.assertEqual(self.db.execute('SELECT status FROM classes WHERE id = ?', (params['class_id'],)).fetchone()['status'], 'failed')
        finally:
            LAB.psql('DROP DATABASE %s' % blocker)

    def test_every_route_refuses_another_teacher(self):
        a, _, _ = self.teacher()
        cid, dbs = self.make_class(a, 'Iso A')
        r = a.post('/console/bases/%s/telecharger' % dbs[0])
        jid = self.job_of(r)
        self.finished(jid)
        b, _, _ = self.teacher()
        values = {'cid': cid, 'name': dbs[0], 'jid': jid, 'aid': 1, 'what': 'desactiver', 'filename': 'console.css'}
        public = {'static', 'health', 'login', 'activate', 'logout', 'ami_login', 'root_noslash', 'home', 'class_new', 'db_import', 'class_create'}
        seen = 0
        for rule in self.app.url_map.iter_rules():
            if rule.endpoint in public:
                continue
            path = rule.build(values, append_unknown=False)[1]
            for method in sorted(rule.methods - {'HEAD', 'OPTIONS'}):
                with self.subTest(path=path, method=method):
                    resp = b.get(path) if method == 'GET' else b.post(path, {'confirm': 'oui', 'backup_id': 'x', 'mode': 'copy'},
                                                                       token=b.token('/console/'))
                    self.assertEqual(resp.status_code, 403, resp.get_data(as_text=True)[-300:])
                    seen += 1
        self.assertGreaterEqual(seen, 15)
        # a class from A's database: refused; B's own list never shows A's
        r = b.post('/console/classes', {'label': 'Vol', 'students': 'X;Y\n', 'model': dbs[0], 'mode': 'per-student'}, token=b.token('/console/'))
        self.assertEqual(r.status_code, 403)
        self.assertNotIn('Iso A', b.get('/console/').get_data(as_text=True))
        self.assertNotIn(dbs[0], b.get('/console/classes/nouvelle').get_data(as_text=True))
        refused = self.db.execute("SELECT count(*) FROM audit WHERE result = 'refusé' AND actor LIKE 'prof%'").fetchone()[0]
        self.assertGreaterEqual(refused, seen)

    def test_every_form_needs_its_token(self):
        a, _, _ = self.teacher()
        anon = Client(self.app)
        for rule in self.app.url_map.iter_rules():
            if 'POST' not in rule.methods:
                continue
            path = rule.build({'cid': 1, 'name': 'x', 'jid': 1, 'aid': 1, 'what': 'desactiver'}, append_unknown=False)[1]
            for who, client in (('teacher', a), ('anonymous', anon)):
                with self.subTest(path=path, who=who):
                    self.assertEqual(client.post(path, {'email': 'x@y.fr', 'password': 'x'}, token=False).status_code, 403)
                    self.assertEqual(client.post(path, {'email': 'x@y.fr', 'password': 'x'}, token='forged-token').status_code, 403)

    def test_cookie_flags(self):
        r = Client(self.app).get('/console/connexion')
        cookie = r.headers['Set-Cookie']
        self.assertTrue(cookie.startswith('__Host-pgi-console='), cookie)
        for flag in ('Secure', 'HttpOnly', 'SameSite=Strict', 'Path=/'):
            self.assertIn(flag, cookie)
        self.assertNotIn('Domain', cookie)
        self.assertIn("frame-ancestors 'none'", r.headers['Content-Security-Policy'])

    def test_login_rate_limit(self):
        _, email, password = self.teacher()
        c = Client(self.app, ip='192.0.2.10')
        for _ in range(config.RATE_PER_LOGIN):
            self.assertEqual(c.post('/console/connexion', {'email': email, 'password': 'wrong'}).status_code, 401)
        # now even the right password waits
        r = c.post('/console/connexion', {'email': email, 'password': password})
        self.assertEqual(r.status_code, 429)
        self.assertIn('Trop de tentatives', r.get_data(as_text=True))
        # per address: another login from the same address, past the address's limit
        d = Client(self.app, ip='192.0.2.11')
        for n in range(config.RATE_PER_IP):
            d.post('/console/connexion', {'email': 'nobody%d@x.fr' % n, 'password': 'wrong'})
        self.assertEqual(d.post('/console/connexion', {'email': 'other@x.fr', 'password': 'wrong'}).status_code, 429)
        # the AMI's login too
        e = Client(self.app, ip='192.0.2.12')
        for _ in range(config.RATE_PER_LOGIN):
            self.assertEqual(e.post('/console/ami/connexion', {'login': 'pgi_admin', 'password': 'wrong'}).status_code, 401)
        self.assertEqual(e.post('/console/ami/connexion', {'login': 'pgi_admin', 'password': consolelab.AMI_PASSWORD}).status_code, 429)
        self.assertTrue(self.db.execute("SELECT 1 FROM audit WHERE action = 'ami.connexion' AND result = 'refusé'").fetchone())

    def test_ami_pages_need_the_ami(self):
        t, _, _ = self.teacher()
        self.assertEqual(t.get('/console/ami/').status_code, 403)
        self.assertEqual(t.get('/console/ami/journal').status_code, 403)
        anon = Client(self.app)
        self.assertEqual(anon.get('/console/ami/').status_code, 302)
        # a role that may not manage roles is not an AMI, whatever its password
        LAB.psql("CREATE ROLE someone LOGIN PASSWORD 'Someone-pw-1'")
        self.assertEqual(anon.post('/console/ami/connexion', {'login': 'someone', 'password': 'Someone-pw-1'}).status_code, 401)
        ami = Client(self.app)
        r = ami.post('/console/ami/connexion', {'login': 'pgi_admin', 'password': consolelab.AMI_PASSWORD})
        self.assertEqual(r.status_code, 302)
        self.assertEqual(ami.get('/console/ami/').status_code, 200)
        self.assertEqual(ami.get('/console/classes/nouvelle').status_code, 403)

    def test_accounts_from_the_command_line(self):
        code, out, _ = LAB.console('teacher', 'add', '--name', 'Irène Joliot', '--email', 'Irene.Joliot@lycee-test.fr')
        self.assertEqual(code, 0)
        self.assertEqual(out['teacher']['email'], 'irene.joliot@lycee-test.fr')
        self.assertEqual(out['teacher']['status'], 'pending')
        self.assertRegex(out['setup_code'], r'^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$')
        self.assertNotIn('hash', json.dumps(out))
        first_code = out['setup_code']
        self.assertEqual(LAB.console('teacher', 'add', '--name', 'X', '--email', 'irene.joliot@lycee-test.fr')[0], 5)
        code, out, _ = LAB.console('teacher', 'add', '--name', 'X', '--email', 'not-an-address')
        self.assertEqual((code, out['error']['code']), (3, 'invalid'))
        self.assertEqual(LAB.console('teacher', 'disable', 'nobody@lycee-test.fr')[0], 4)
        self.assertEqual(LAB.console('teacher', 'frobnicate')[0], 2)
        code, listed, _ = LAB.console('teacher', 'list')
        self.assertIn('irene.joliot@lycee-test.fr', [t['email'] for t in listed])
        # the code sets the password; a reset spends the password and the sessions, a new code works
        c = Client(self.app)
        self.assertEqual(c.post('/console/activer', {'email': 'irene.joliot@lycee-test.fr', 'code': first_code.lower(), 'password': 'Irene-pw-123',
                                                     'confirm': 'Irene-pw-123'}).status_code, 302)
        self.assertEqual(c.get('/console/').status_code, 200)
        code, out, _ = LAB.console('teacher', 'reset', 'irene.joliot@lycee-test.fr')
        self.assertEqual(code, 0)
        self.assertEqual(c.get('/console/').status_code, 302)  # the session ended
        other = Client(self.app, ip='198.51.100.7')
        self.assertEqual(other.post('/console/connexion', {'email': 'irene.joliot@lycee-test.fr', 'password': 'Irene-pw-123'}).status_code, 401)
        self.assertEqual(other.post('/console/activer', {'email': 'irene.joliot@lycee-test.fr', 'code': first_code, 'password': 'Irene-pw-456',
                                                         'confirm': 'Irene-pw-456'}).status_code, 400)
        self.assertEqual(other.post('/console/activer', {'email': 'irene.joliot@lycee-test.fr', 'code': out['setup_code'], 'password': 'Irene-pw-456',
                                                         'confirm': 'Irene-pw-456'}).status_code, 302)
        # disabled: sessions end, no login; enabled again: back
        self.assertEqual(LAB.console('teacher', 'disable', 'irene.joliot@lycee-test.fr')[0], 0)
        self.assertEqual(other.get('/console/').status_code, 302)
        self.assertEqual(Client(self.app, ip='198.51.100.8').post('/console/connexion', {'email': 'irene.joliot@lycee-test.fr',
                                                                                         'password': 'Irene-pw-456'}).status_code, 401)
        self.assertEqual(LAB.console('teacher', 'enable', 'irene.joliot@lycee-test.fr')[0], 0)
        self.assertEqual(Client(self.app, ip='198.51.100.9').post('/console/connexion', {'email': 'irene.joliot@lycee-test.fr',
                                                                                         'password': 'Irene-pw-456'}).status_code, 302)
        # the audit log, as JSON
        code, out, _ = LAB.console('audit', '--actor', 'cli:root', '--limit', '50')
        self.assertEqual(code, 0)
        self.assertEqual({e['action'] for e in out} >= {'enseignant.creer', 'enseignant.reinitialiser', 'enseignant.desactiver',
                                                        'enseignant.reactiver'}, True, out)
        self.assertEqual(LAB.console('audit', '--limit', '0')[0], 2)

    def test_passwords_are_argon2_and_codes_are_not_kept(self):
        _, email, _ = self.teacher()
        row = self.db.execute('SELECT password_hash, setup_code_hash FROM accounts WHERE email = ?', (email,)).fetchone()
        self.assertTrue(row['password_hash'].startswith('$argon2id$v=19$m=19456,t=2,p=2$'), row['password_hash'])
        self.assertIsNone(row['setup_code_hash'])
        # a hash made with the earlier parameters (1 lane) still lets its teacher in, and is remade
        from argon2 import PasswordHasher, Type
        old = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID).hash('Earlier-pw-789')
        self.db.execute('UPDATE accounts SET password_hash = ? WHERE email = ?', (old, email))
        self.db.commit()
        r = Client(self.app, ip='198.51.100.21').post('/console/connexion', {'email': email, 'password': 'Earlier-pw-789'})
        self.assertEqual(r.status_code, 302)
        remade = self.db.execute('SELECT password_hash FROM accounts WHERE email = ?', (email,)).fetchone()['password_hash']
        self.assertTrue(remade.startswith('$argon2id$v=19$m=19456,t=2,p=2$'), remade)
        self.assertTrue(security.verify_password(remade, 'Earlier-pw-789')[0])
        # the store holds no student password in clear
        t, _, _ = self.teacher()
        cid, _ = self.make_class(t, 'Secrets')
        sheet = t.get('/console/classes/%d/fiche' % cid).get_data(as_text=True)
        shown = re.findall(r'<td class="mono">([a-z2-9]{10})</td>', sheet)
        self.assertEqual(len(shown), 2)
        # the store's files read by another process: closing a descriptor of the database file
        # here would drop every POSIX lock this process's SQLite connections hold on it, and the
        # next process to close its last connection could then take the store for unused and
        # remove its WAL under them (tests after this one saw another store than the worker's)
        import subprocess
        raw = subprocess.run([sys.executable, '-c', 'import os, sys\nfor p in sys.argv[1:]:\n    if os.path.exists(p):\n'
                              '        sys.stdout.buffer.write(open(p, "rb").read())', config.STORE, config.STORE + '-wal'],
                             capture_output=True, check=True).stdout
        self.assertGreater(len(raw), 4096)
        for pw in shown:
            self.assertNotIn(pw.encode(), raw)

    def test_bad_rows_are_reported_with_their_line_and_nothing_is_made(self):
        t, _, _ = self.teacher()
        before = self.db.execute('SELECT count(*) FROM jobs').fetchone()[0]
        r = t.post('/console/classes', {'label': 'Mauvaise', 'model': 'bts', 'mode': 'per-student',
                                        'students': 'Nom;Prénom\nDUPONT;Léa\n;Hugo\nMARTIN;\n' + 'X' * 90 + ';Y\n'})
        self.assertEqual(r.status_code, 400)
        html = r.get_data(as_text=True)
        for line in ('ligne 3 : nom manquant', 'ligne 4 : prénom manquant', 'ligne 5 : nom trop long'):
            self.assertIn(line, html)
        self.assertEqual(self.db.execute('SELECT count(*) FROM jobs').fetchone()[0], before)
        r = t.post('/console/classes', {'label': 'Vide', 'model': 'bts', 'mode': 'per-student', 'students': ''})
        self.assertEqual(r.status_code, 400)
        # an uploaded file, Windows-1252 as a spreadsheet saves it
        data = {'label': 'Fichier', 'model': 'bts', 'mode': 'shared', 'students': '',
                'students_file': (io.BytesIO('Nom;Prénom\nLEFÈVRE;Zoé\nGARCIA;Noé\n'.encode('cp1252')), 'eleves.csv')}
        r = t.post('/console/classes', data, content_type='multipart/form-data')
        out = self.finished(self.job_of(r))
        self.assertEqual(len(out['databases']), 1)  # shared: one database
        sheet = t.get('/console/classes/%d/fiche' % out['class_id']).get_data(as_text=True)
        self.assertIn('LEFÈVRE Zoé', sheet)
        self.assertIn('zoe.lefevre', sheet)

    def test_import_validates_before_making_anything(self):
        t, _, _ = self.teacher()
        cid, dbs = self.make_class(t, 'Import')
        # not a dump
        r = t.post('/console/bases/importer', {'name': 'import_rate', 'dump': (io.BytesIO(b'not a dump at all'), 'x.dump')},
                   content_type='multipart/form-data')
        self.assertEqual(r.status_code, 400)
        self.assertIn('pas une sauvegarde PostgreSQL', r.get_data(as_text=True))
        self.assertEqual(LAB.psql("SELECT count(*) FROM pg_database WHERE datname = 'import_rate'"), [['0']])
        self.assertEqual(os.listdir(config.UPLOADS), [f for f in os.listdir(config.UPLOADS) if f.startswith('classe-')])
        # a name that exists
        r = t.post('/console/bases/importer', {'name': dbs[0], 'dump': (io.BytesIO(b'PGDMP'), 'x.dump')}, content_type='multipart/form-data')
        self.assertEqual(r.status_code, 400)
        # a real one: a student's database, downloaded, then imported under a new name
        jid = self.job_of(t.post('/console/bases/%s/telecharger' % dbs[0]))
        out = self.finished(jid)
        dump = t.get('/console/taches/%d/fichier' % jid)
        self.assertEqual(dump.status_code, 200)
        body = dump.get_data()
        self.assertEqual(body[:5], b'PGDMP')
        r = t.post('/console/bases/importer', {'name': 'copie_importee', 'dump': (io.BytesIO(body), out['filename'])},
                   content_type='multipart/form-data')
        res = self.finished(self.job_of(r))
        self.assertEqual(res['database'], 'copie_importee')
        owner = self.db.execute("SELECT a.email FROM databases d JOIN accounts a ON a.id = d.owner_id WHERE d.name = 'copie_importee' AND d.status = 'active'").fetchone()
        self.assertIsNotNone(owner)
        self.assertIn('copie_importee', t.get('/console/').get_data(as_text=True))
        # a dump with a damaged body: refused by the engine's check, nothing made
        r = t.post('/console/bases/importer', {'name': 'abimee', 'dump': (io.BytesIO(body[:4000]), 'abimee.dump')}, content_type='multipart/form-data')
        jid = self.job_of(r)
        self.run_jobs()
        row = self.db.execute('SELECT state, error FROM jobs WHERE id = ?', (jid,)).fetchone()
        self.assertEqual(row['state'], 'failed')
        self.assertEqual(LAB.psql("SELECT count(*) FROM pg_database WHERE datname = 'abimee'"), [['0']])
        # too big: refused by the size limit
        saved = config.UPLOAD_MAX_BYTES
        try:
            config.UPLOAD_MAX_BYTES = 1000
            r = t.post('/console/bases/importer', {'name': 'trop_grosse', 'dump': (io.BytesIO(b'PGDMP' + b'x' * 5000), 'g.dump')},
                       content_type='multipart/form-data')
            self.assertEqual(r.status_code, 400)
            self.assertIn('dépasse la taille', r.get_data(as_text=True))
        finally:
            config.UPLOAD_MAX_BYTES = saved

    def test_archive_keeps_final_dumps_and_backups_stay_with_their_teacher(self):
        a, _, _ = self.teacher()
        cid, dbs = self.make_class(a, 'Archive')
        label = self.db.execute('SELECT label, model_db FROM classes WHERE id = ?', (cid,)).fetchone()
        r = a.post('/console/classes/%d/archiver' % cid, {'confirm': 'pas le bon nom'})
        self.assertEqual(r.status_code, 400)
        r = a.post('/console/classes/%d/archiver' % cid, {'confirm': label['label']})
        out = self.finished(self.job_of(r))
        self.assertEqual(sorted(x['database'] for x in out['archived']), sorted(dbs + [label['model_db']]))
        self.assertEqual(LAB.psql("SELECT count(*) FROM pg_database WHERE datname IN (%s)" % ', '.join("'%s'" % d for d in dbs)), [['0']])
        page = a.get('/console/classes/%d' % cid).get_data(as_text=True)
        self.assertIn('Sauvegardes finales', page)
        for d in dbs:
            self.assertIn(d, page)
        # a final dump restored as a copy (the name is free again: the same name)
        restore = a.get('/console/bases/%s/restaurer' % dbs[0]).get_data(as_text=True)
        bid = re.search(r'name="backup_id" id="b1" value="([^"]+)"', restore).group(1)
        self.assertTrue(bid.endswith('-final'), bid)
        res = self.finished(self.job_of(a.post('/console/bases/%s/restaurer' % dbs[0], {'backup_id': bid, 'mode': 'copy'})))
        self.assertEqual(res['database'], dbs[0])
        self.assertEqual(LAB.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % dbs[0]), [['1']])
        # another teacher who later makes a database of that name (here: an import) never sees A's dumps
        b, _, _ = self.teacher()
        jid = self.job_of(a.post('/console/bases/%s/telecharger' % dbs[0]))
        self.finished(jid)
        body = a.get('/console/taches/%d/fichier' % jid).get_data()
        name = dbs[1]  # archived by A: free
        res = self.finished(self.job_of(b.post('/console/bases/importer', {'name': name, 'dump': (io.BytesIO(body), 'x.dump')},
                                               content_type='multipart/form-data')))
        self.assertEqual(res['database'], name)
        restore_b = b.get('/console/bases/%s/restaurer' % name)
        self.assertEqual(restore_b.status_code, 200)
        html = restore_b.get_data(as_text=True)
        self.assertNotIn('-final', html)
        a_final = [r[0] for r in self.db.execute("SELECT id FROM backups_index WHERE database = ? AND kind = 'final'", (name,))]
        self.assertTrue(a_final)
        r = b.post('/console/bases/%s/restaurer' % name, {'backup_id': a_final[0], 'mode': 'copy'})
        self.assertEqual(r.status_code, 403)
        r = b.post('/console/bases/%s/telecharger' % name, {'backup_id': a_final[0]})
        self.assertEqual(r.status_code, 403)
        # and A no longer acts on that name (B's database now)
        self.assertEqual(a.post('/console/bases/%s/sauvegarder' % name).status_code, 403)

    def test_one_job_per_database_at_a_time_and_interrupted_jobs(self):
        t, _, _ = self.teacher()
        _, dbs = self.make_class(t, 'Jobs')
        first = self.job_of(t.post('/console/bases/%s/sauvegarder' % dbs[0]))
        second = t.post('/console/bases/%s/sauvegarder' % dbs[0])
        self.assertIn('/console/taches/%d' % first, second.headers['Location'])  # shown the running one, no second
        self.finished(first)
        # a job whose process died: the worker marks it failed when it starts
        jid = self.job_of(t.post('/console/bases/%s/sauvegarder' % dbs[0]))
        self.db.execute("UPDATE jobs SET state = 'running', pid = 999999 WHERE id = ?", (jid,))
        worker.recover(self.db)
        row = self.db.execute('SELECT state, message FROM jobs WHERE id = ?', (jid,)).fetchone()
        self.assertEqual(row['state'], 'failed')
        self.assertIn('interrompue', row['message'])

    def test_a_class_stopped_by_sigterm_leaves_nothing(self):
        """The job process of a class gets SIGTERM (the worker or the VM stopping) while the
        students' databases are being made: it ends failed `interrupted` (143), and leaves none of
        the class's databases (neither the complete ones nor the class's model) and no temporary
        one; the class is failed and the store lists none of its databases."""
        # 60 students, one copy at a time: the signal comes while copies remain to be made; the
        # template restored first (the first class of this lab would restore it in the job)
        pgidb.ensure_template('bts')
        t, _, _ = self.teacher()
        rows = ''.join('COUPE%s;Eleve%d;Coupee\n' % (chr(65 + i % 26), i) for i in range(60))
        jid = self.job_of(t.post('/console/classes', {'label': 'Coupee', 'students': 'Nom;Prénom;Classe\n' + rows, 'model': 'bts',
                                                      'mode': 'per-student'}))
        job = self.db.execute('SELECT params, targets FROM jobs WHERE id = ?', (jid,)).fetchone()
        params, targets = json.loads(job['params']), json.loads(job['targets'])
        names = ', '.join("'%s'" % n for n in targets if n != params['model_db'])
        rc, _, err = consolelab.pgitest.stop_when(
            [consolelab.PYTHON, os.path.join(consolelab.SBIN, 'pgi-console'), 'job-run', str(jid)],
            lambda: LAB.psql('SELECT 1 FROM pg_database WHERE datname IN (%s) LIMIT 1' % names), dict(os.environ, PGI_DB_COPIES='1'), 'the class job')
        self.assertEqual(rc, 143, err[-800:])
        row = self.db.execute('SELECT state, error FROM jobs WHERE id = ?', (jid,)).fetchone()
        self.assertEqual((row['state'], json.loads(row['error'])['code']), ('failed', 'interrupted'))
        left = LAB.psql("SELECT datname FROM pg_database WHERE datname IN (%s) OR datname LIKE 'pgi\\_tmp\\_%%'"
                        % ', '.join("'%s'" % n for n in targets))
        self.assertEqual(left, [])
        self.assertEqual(self.db.execute('SELECT status FROM classes WHERE id = ?', (params['class_id'],)).fetchone()['status'], 'failed')
        self.assertEqual(self.db.execute("SELECT name FROM databases WHERE class_id = ? AND status = 'active'", (params['class_id'],)).fetchall(), [])

    def test_the_worker_starts_jobs_when_woken(self):
        """The worker as the service runs it, looking at its queue once an hour only: a queued job
        still starts at once (the web application wakes it through its FIFO), and a second one,
        waiting for the only job slot, as soon as the first ends (its process's SIGCHLD). A job's
        process (`pgi-console job-run`, a child of the worker) counts alive for recover(); SIGTERM
        to the control group (the job and the worker, as systemd sends it) leaves nothing of a
        class half-made, and the worker ends once its job has."""
        import signal
        import subprocess
        pgidb.ensure_template('bts')
        t, _, _ = self.teacher()
        _, dbs = self.make_class(t, 'Eveil')
        log = open(os.path.join(LAB.dir, 'worker-wake-test.log'), 'w')
        w = subprocess.Popen([consolelab.PYTHON, os.path.join(consolelab.SBIN, 'pgi-console'), 'worker'], stdout=log, stderr=log,
                             env=dict(LAB.env(), PGI_DB_COPIES='1', PGI_CONSOLE_WORKER_POLL_S='3600', PGI_CONSOLE_MAX_JOBS='1'),
                             start_new_session=True)

        def state(jid):
            return self.db.execute('SELECT * FROM jobs WHERE id = ?', (jid,)).fetchone()

        def until(what, check, timeout=120):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                out = check()
                if out:
                    return out
                self.assertIsNone(w.poll(), 'the worker ended: see %s' % log.name)
                time.sleep(0.05)
            self.fail('%s: not after %d s (the worker\'s log: %s)' % (what, timeout, log.name))

        def ended(jid):
            row = state(jid)
            return row['state'] in ('done', 'failed') and row

        try:
            until('the worker\'s FIFO', lambda: os.path.exists(config.WAKE_FIFO))
            # let its first scan pass (it runs before the first wait), so that only a wake-up can start what follows
            until('the worker\'s first heartbeat', lambda: store.meta_get(self.db, 'worker_seen'))
            time.sleep(1)
            first = self.job_of(t.post('/console/bases/%s/sauvegarder' % dbs[0]))
            second = self.job_of(t.post('/console/bases/%s/sauvegarder' % dbs[1]))
            for jid in (first, second):
                row = until('backup job %d ended' % jid, lambda: ended(jid))
                self.assertEqual(row['state'], 'done', row['error'])
            self.assertLessEqual(state(first)['finished_at'], state(second)['started_at'])  # one slot: one after the other
            rows = ''.join('EVEIL%s;Eleve%d;Eveil\n' % (chr(65 + i % 26), i) for i in range(60))
            jid = self.job_of(t.post('/console/classes', {'label': 'Eveil2', 'students': 'Nom;Prénom;Classe\n' + rows, 'model': 'bts',
                                                          'mode': 'per-student'}))
            params, targets = json.loads(state(jid)['params']), json.loads(state(jid)['targets'])
            names = ', '.join("'%s'" % n for n in targets if n != params['model_db'])
            until('a student\'s database made', lambda: LAB.psql('SELECT 1 FROM pg_database WHERE datname IN (%s) LIMIT 1' % names))
            pid = state(jid)['pid']
            with open('/proc/%d/stat' % pid) as f:
                self.assertEqual(int(f.read().rsplit(')', 1)[1].split()[1]), w.pid)  # a child of the worker
            worker.recover(self.db)
            self.assertEqual(state(jid)['state'], 'running')
            os.kill(pid, signal.SIGTERM)
            w.send_signal(signal.SIGTERM)
            self.assertEqual(w.wait(120), 0)
        finally:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
            log.close()
        row = state(jid)
        self.assertEqual((row['state'], json.loads(row['error'])['code']), ('failed', 'interrupted'))
        left = LAB.psql("SELECT datname FROM pg_database WHERE datname IN (%s) OR datname LIKE 'pgi\\_tmp\\_%%'"
                        % ', '.join("'%s'" % n for n in targets))
        self.assertEqual(left, [])

    def test_reset_keeps_the_sheet_true(self):
        t, _, _ = self.teacher()
        cid, dbs = self.make_class(t, 'Reset')
        before = LAB.psql("SELECT login, password_hash FROM res_user WHERE login NOT IN ('admin', 'pgi_health') ORDER BY login", db=dbs[0])
        LAB.psql("UPDATE party_party SET name = 'changé par l''élève' WHERE id = (SELECT min(id) FROM party_party)", db=dbs[0])
        out = self.finished(self.job_of(t.post('/console/bases/%s/reinitialiser' % dbs[0], {'confirm': 'oui'})))
        self.assertTrue(out['kept'].endswith('before-replace'))
        after = LAB.psql("SELECT login, password_hash FROM res_user WHERE login NOT IN ('admin', 'pgi_health') ORDER BY login", db=dbs[0])
        self.assertEqual(before, after)
        self.assertEqual(LAB.psql("SELECT count(*) FROM party_party WHERE name = 'changé par l''élève'", db=dbs[0]), [['0']])
        meta = dict(LAB.psql('SELECT key, value FROM pgi_meta', db=dbs[0]))
        self.assertIn('student', meta)
        self.assertEqual(meta['kind'], 'class-student')
        # without the confirmation: nothing
        r = t.post('/console/bases/%s/reinitialiser' % dbs[0], {})
        self.assertEqual(r.status_code, 400)

    def test_first_request_after_a_reset_works(self):
        """trytond pools connections per database; the reset closes them with the old database. The
        engine releases them (its own logins), so the student's first request after it works."""
        t, _, _ = self.teacher()
        cid, dbs = self.make_class(t, 'Relance')
        login, = LAB.psql("SELECT login FROM res_user WHERE login NOT IN ('admin', 'pgi_health') AND login NOT LIKE 'prof.%' "
                          'ORDER BY login LIMIT 1', db=dbs[0])[0]
        pw = security.unseal(self.db.execute('SELECT password FROM students WHERE login = ? AND database = ?', (login, dbs[0])).fetchone()[0])

        def rpc_login():
            r = LAB.rpc(dbs[0], 'common.db.login', [login, {'password': pw}, 'fr'])
            return r.get('result') if isinstance(r.get('result'), list) else r.get('error')
        self.assertIsInstance(rpc_login(), list)  # trytond now holds a pooled connection to it
        held = LAB.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND usename = 'tryton'" % dbs[0])[0][0]
        self.assertGreater(int(held), 0)
        out = self.finished(self.job_of(t.post('/console/bases/%s/reinitialiser' % dbs[0], {'confirm': 'oui'})))
        self.assertGreaterEqual(out['closed_connections'], 1)
        self.assertIsInstance(rpc_login(), list, 'the first login after the reset')

    def test_pages_show_the_sizes_the_worker_measured(self):
        """Pages never stat databases (pg_database_size): the worker measures, the store keeps."""
        t, _, _ = self.teacher()
        cid, dbs = self.make_class(t, 'Tailles')
        self.db.execute('DELETE FROM db_sizes')
        page = t.get('/console/classes/%d' % cid).get_data(as_text=True)
        self.assertNotIn('Tailles mesurées', page)
        self.assertGreaterEqual(jobs.refresh_sizes(self.db), len(dbs))
        sizes, at = store.sizes_get(self.db, dbs)
        self.assertEqual(set(sizes), set(dbs))
        self.assertGreater(min(sizes.values()), 1 << 20)
        page = t.get('/console/classes/%d' % cid).get_data(as_text=True)
        self.assertIn('Tailles mesurées le', page)
        self.assertIn(web.human_size(sizes[dbs[0]]), page)
        # a database gone is forgotten at the next measure
        self.db.execute("UPDATE databases SET status = 'dropped' WHERE name = ?", (dbs[0],))
        LAB.psql('DROP DATABASE %s' % dbs[0])
        jobs.refresh_sizes(self.db)
        self.assertNotIn(dbs[0], store.sizes_get(self.db, dbs)[0])

    def test_audit_page_shows_a_page_at_a_time(self):
        for i in range(config.AUDIT_PAGE + 5):
            store.audit(self.db, 'cli:page-test', 'ami', 'essai', 'ligne %d' % i, 'ok')
        ami = Client(self.app)
        self.assertEqual(ami.post('/console/ami/connexion', {'login': 'pgi_admin', 'password': consolelab.AMI_PASSWORD}).status_code, 302)
        page = ami.get('/console/ami/journal?qui=cli:page-test').get_data(as_text=True)
        self.assertEqual(page.count('<td>essai</td>'), config.AUDIT_PAGE)
        self.assertIn('ligne %d<' % (config.AUDIT_PAGE + 4), page)
        m = re.search(r'href="([^"]*avant=(\d+)[^"]*)">Actions plus anciennes', page)
        self.assertIsNotNone(m, page[-1500:])
        older = ami.get(m.group(1).replace('&amp;', '&')).get_data(as_text=True)
        self.assertEqual(older.count('<td>essai</td>'), 5)
        self.assertIn('ligne 0<', older)
        self.assertNotIn('>Actions plus anciennes</a>', older)

    def test_health(self):
        anon = Client(self.app)
        store.meta_set(self.db, 'worker_seen', time.time())
        r = anon.get('/console/sante')
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.get_json()['ok'], True)
        store.meta_set(self.db, 'worker_seen', time.time() - 3600)
        r = anon.get('/console/sante')
        self.assertEqual(r.status_code, 503)
        self.assertEqual(r.get_json()['worker'], False)


if __name__ == '__main__':
    unittest.main()
