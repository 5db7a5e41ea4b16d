"""The PGI image's database engine (pgi-db, pgidb.py, make-template's template, pgi-backup's
interplay, pgi-health's login check), run natively against a throwaway PostgreSQL cluster and a
real trytond (pgitest.Lab). Tryton is the judge: logins are Tryton's common.db.login, invoices are
posted by proteus (Debian's tryton-proteus, a real client) in the fiscal years the engine made.

Run: /usr/bin/python3 -m unittest -v test/unit/image-tools/test_pgidb.py (as root), or through
vitest (pgi-db.test.ts). The tests share one lab and run in order (test_NN_).
"""
import datetime
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import unittest
import urllib.error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgitest  # noqa: E402

lab = None
TODAY = datetime.date.today()


setUpModule, tearDownModule = pgitest.use_lab(globals())


def write(name, data):
    path = os.path.join(lab.dir, name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


class Engine(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.t0 = time.monotonic()

    def tearDown(self):
        sys.stderr.write('[%.1f s] ' % (time.monotonic() - self.t0))

    # -- helpers
    def ok(self, *args, **kw):
        rc, out, err = lab.db(*args, **kw)
        self.assertEqual(rc, 0, 'pgi-db %s failed (%d): %s %s' % (' '.join(map(str, args)), rc, out, err[-1500:]))
        return out

    def refused(self, status, code, *args, **kw):
        """The command fails with `status` and error `code`, and changes no database."""
        before = lab.databases()
        rc, out, err = lab.db(*args, **kw)
        self.assertEqual(rc, status, 'pgi-db %s: expected exit %d, got %d: %s %s' % (' '.join(map(str, args)), status, rc, out, err[-800:]))
        self.assertIsInstance(out, dict, out)
        self.assertEqual(out['error']['code'], code, out)
        self.assertTrue(err.strip(), 'a message on stderr')
        self.assertEqual(lab.databases(), before, 'no database made or removed')
        return out['error']

    def login(self, db, login, password):
        """Tryton's common.db.login; False when refused (HTTP 401, or an error in the answer)."""
        try:
            r = lab.rpc(db, 'common.db.login', [login, {'password': password}, 'fr'])
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                return False
            raise
        return isinstance(r.get('result'), list)

    def session_login(self, db, login, password):
        """(login, user id, session key) of a new Tryton session."""
        r = lab.rpc(db, 'common.db.login', [login, {'password': password}, 'fr'])
        self.assertIsInstance(r.get('result'), list, r)
        return login, r['result'][0], r['result'][1]

    def session_call(self, db, sess, method, params):
        """A JSON-RPC call in a Tryton session: its answer (a dict with "result" or "error")."""
        import base64
        body = json.dumps({'id': 1, 'method': method, 'params': params}).encode()
        req = urllib.request.Request('http://127.0.0.1:%d/%s/' % (lab.web_port, db), data=body, headers={
            'Content-Type': 'application/json', 'Authorization': 'Session ' + base64.b64encode(('%s:%s:%s' % sess).encode()).decode()})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return {'error': 'HTTP %d' % e.code}

    def warm(self, db):
        """A login on `db`: trytond loads it if needed and keeps a pooled connection to it."""
        for _ in range(2):
            if self.login(db, 'admin', pgitest.ADMIN_PASSWORD):
                return
        self.fail('admin cannot log into %s' % db)

    def sql(self, db, query):
        return lab.psql(query, db)

    def invoices(self, db):
        """number, state, untaxed amount, tax of the customer invoices (Tryton 6.0 keeps no total column)."""
        return self.sql(db, "SELECT i.number, i.state, (SELECT sum(quantity * unit_price) FROM account_invoice_line WHERE invoice = i.id), "
                        "(SELECT sum(amount) FROM account_invoice_tax WHERE invoice = i.id) FROM account_invoice i WHERE type = 'out' ORDER BY number")

    # -- create
    def test_01_create_from_template(self):
        # the cluster holds the template from the start (seed-cluster, as the image's first boot)
        self.assertEqual(self.sql('postgres', "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = 'pgi_template_bts'"),
                         [['t', 'f']])
        out = self.ok('create', 'pgi', '--company', 'Lycée Jean Moulin', '--fiscal-year', '2027')
        self.assertEqual(out['from'], 'template')
        self.assertEqual(out['method'], 'template')
        self.assertIn('account_fr', out['modules'])
        self.assertEqual(out['fiscal_years'][0]['fiscal_year'], '2027')
        self.assertEqual(out['fiscal_years'][0]['action'], 'moved')
        self.assertEqual(self.sql('pgi', 'SELECT p.name FROM company_company c JOIN party_party p ON p.id = c.party'), [['Lycée Jean Moulin']])
        self.assertEqual(self.sql('pgi', 'SELECT name, start_date, end_date, state FROM account_fiscalyear'),
                         [['2027', '2027-01-01', '2027-12-31', 'open']])
        periods = self.sql('pgi', 'SELECT name, start_date, end_date FROM account_period ORDER BY start_date')
        self.assertEqual([p[0] for p in periods], ['2027-%02d' % m for m in range(1, 13)])
        self.assertEqual(periods[1][2], '2027-02-28')
        seqs = self.sql('pgi', 'SELECT s.name, s.prefix FROM account_fiscalyear_invoice_sequence i '
                        'JOIN ir_sequence_strict s ON s.id = i.out_invoice_sequence')
        self.assertEqual(seqs, [['Factures clients 2027', 'FC2027-']])
        self.assertEqual(self.sql('pgi', 'SELECT s.name FROM account_fiscalyear f JOIN ir_sequence s ON s.id = f.post_move_sequence'),
                         [['Écritures 2027']])
        self.assertTrue(self.login('pgi', 'admin', pgitest.ADMIN_PASSWORD), 'the admin password set by pgi-configure opens it')
        self.assertFalse(self.login('pgi', 'admin', 'wrong-password'))
        # a leap year: February ends on the 29th
        self.ok('create', 'pgi_bissextile', '--fiscal-year', '2028')
        self.assertEqual(self.sql('pgi_bissextile', "SELECT end_date FROM account_period WHERE name = '2028-02'"), [['2028-02-29']])
        # no year given: the current calendar year
        out = self.ok('create', 'pgi_courant')
        self.assertEqual(self.sql('pgi_courant', 'SELECT name FROM account_fiscalyear'), [[str(TODAY.year)]])
        self.assertEqual(self.sql('pgi_courant', 'SELECT p.name FROM company_company c JOIN party_party p ON p.id = c.party'),
                         [['Entreprise modèle']])
        self.assertEqual(self.sql('postgres', "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgi_tmp_%'"), [['0']])
        self.assertEqual(self.sql('pgi', "SELECT value FROM pgi_meta WHERE key = 'source'"), [['template']])
        self.assertEqual(self.sql('postgres', "SELECT datistemplate FROM pg_database WHERE datname = 'pgi'"), [['f']])
        # a data disk made by an older image (no template database) or a new image (another dump):
        # the first creation restores the image's dump into the cluster once
        lab.psql('ALTER DATABASE pgi_template_bts IS_TEMPLATE false')
        lab.psql('DROP DATABASE pgi_template_bts')
        self.ok('create', 'pgi_disque_ancien')
        lab.psql('COMMENT ON DATABASE pgi_template_bts IS \'{"dump_sha256": "0000"}\'')
        self.ok('create', 'pgi_image_nouvelle')
        meta = json.loads(self.sql('postgres', "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'pgi_template_bts'")[0][0])
        with open(os.path.join(lab.templates, 'bts.dump'), 'rb') as f:
            import hashlib
            self.assertEqual(meta['dump_sha256'], hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(self.invoices('pgi_image_nouvelle'), [])
        for d in ('pgi_disque_ancien', 'pgi_image_nouvelle'):
            lab.psql('DROP DATABASE %s' % d)

    def test_02_invoice_posted_in_the_new_fiscal_year(self):
        inv = lab.proteus('pgi', 'admin', pgitest.ADMIN_PASSWORD, pgitest.post_invoice_script('2027-03-15', 'Client Mars'))
        self.assertEqual((inv['number'], inv['state'], inv['total'], inv['untaxed'], inv['move']), ('FC2027-0001', 'posted', '360.00', '300.00', '1'))

    def test_03_create_from_a_database_adds_a_fiscal_year(self):
        out = self.ok('create', 'pgi_suite', '--from', 'pgi', '--fiscal-year', '2028', '--company', 'Suite SARL')
        self.assertEqual(out['from'], 'pgi')
        self.assertEqual(out['fiscal_years'][0]['action'], 'created')
        self.assertEqual(self.sql('pgi_suite', 'SELECT name FROM account_fiscalyear ORDER BY start_date'), [['2027'], ['2028']])
        self.assertEqual(self.sql('pgi_suite', "SELECT count(*) FROM account_period p JOIN account_fiscalyear f ON f.id = p.fiscalyear WHERE f.name = '2028'"),
                         [['12']])
        self.assertEqual(self.sql('pgi_suite', 'SELECT count(*) FROM ir_cron WHERE active'), [['0']], 'a copy is neutralised')
        self.assertEqual(self.sql('pgi', 'SELECT name FROM account_fiscalyear'), [['2027']], 'the source is untouched')
        inv = lab.proteus('pgi_suite', 'admin', pgitest.ADMIN_PASSWORD, pgitest.post_invoice_script('2028-02-29', 'Client 2028'))
        self.assertEqual((inv['number'], inv['state'], inv['move']), ('FC2028-0001', 'posted', '1'), 'fresh sequences for 2028')
        inv = lab.proteus('pgi_suite', 'admin', pgitest.ADMIN_PASSWORD, pgitest.post_invoice_script('2027-12-31', 'Client 2027'))
        self.assertEqual(inv['number'], 'FC2027-0002', '2027 goes on from the source')
        # a year before the existing ones
        self.ok('create', 'pgi_avant', '--from', 'pgi_suite', '--fiscal-year', '2026')
        self.assertEqual(self.sql('pgi_avant', 'SELECT name FROM account_fiscalyear ORDER BY start_date'), [['2026'], ['2027'], ['2028']])

    def test_03b_nightly_sets_are_listed_and_restorable(self):
        rc, out, err = lab.tool('pgi-backup')
        self.assertEqual(rc, 0, err)
        stamp = os.path.basename(os.path.dirname(str(out).strip()))
        with open(os.path.join(lab.data, 'backups', stamp, 'manifest.json')) as f:
            manifest = json.load(f)
        names = [e['name'] for e in manifest['databases']]
        self.assertIn('pgi', names)
        self.assertFalse([n for n in names if n.startswith('pgi_tmp_') or n.startswith('pgi_template_')])
        self.assertEqual(manifest['tryton']['series'], '6.0')
        # uncompressed custom-format dumps (-Z0: restic deduplicates them night after night), said so
        # in the manifest and in the archive's header, and every reader below takes them
        entry = next(e for e in manifest['databases'] if e['name'] == 'pgi')
        self.assertEqual(entry['compression'], 0)
        dump = os.path.join(lab.data, 'backups', stamp, entry['file'])
        with open(dump, 'rb') as f:
            head = f.read(16)
        self.assertEqual((head[:5], head[11:16]), (b'PGDMP', b'\x00\x00\x00\x00\x00'), 'archive 1.14: compression 0')
        nightly = [e for e in self.ok('backups', 'pgi') if e['kind'] == 'nightly']
        self.assertEqual(nightly[0]['id'], stamp)
        self.assertIsNone(nightly[0]['verified'])
        rc, out, err = lab.tool('pgi-backup', '--verify')
        self.assertEqual(rc, 0, err)
        nightly = [e for e in self.ok('backups', 'pgi') if e['kind'] == 'nightly']
        self.assertEqual((nightly[0]['verified']['ok'], nightly[0]['verified']['method']), (True, 'restore'))
        self.ok('restore', 'pgi', '--from', stamp, '--as', 'pgi_nuit')
        self.assertEqual(self.invoices('pgi_nuit'), self.invoices('pgi'))
        # the nightly dump taken away and imported elsewhere (a teacher's download, then an upload)
        self.ok('import', dump, '--as', 'pgi_nuit_importee')
        self.assertEqual(self.invoices('pgi_nuit_importee'), self.invoices('pgi'))
        # the space checks read the header: an uncompressed dump's estimate is not ten times its size
        r = subprocess.run([pgitest.PYTHON, '-c', 'import sys, pgidb; print(pgidb.dump_compressed(sys.argv[1]), pgidb.dump_expansion(sys.argv[1]))', dump],
                           capture_output=True, text=True, env=lab.env())
        self.assertEqual(r.stdout.split(), ['False', '3'], r.stderr)
        self.ok('drop', 'pgi_nuit_importee')
        # pgi-db's own dumps never count as (or get pruned like) nightly sets
        self.assertFalse(os.path.exists(os.path.join(lab.data, 'backups', 'databases', 'manifest.json')))

    def test_04_bad_input_changes_nothing(self):
        self.refused(3, 'invalid_name', 'create', 'Pgi-Lycée')
        self.refused(3, 'invalid_name', 'create', 'a' * 64)
        self.refused(3, 'invalid_name', 'create', '1abc')
        self.refused(3, 'reserved_name', 'create', 'pgi_tmp_x')
        self.refused(5, 'exists', 'create', 'pgi')
        self.refused(4, 'not_found', 'create', 'nouvelle', '--from', 'absente')
        self.refused(3, 'invalid_year', 'create', 'nouvelle', '--fiscal-year', '20x6')
        self.refused(3, 'invalid_company', 'create', 'nouvelle', '--company', '   ')
        self.refused(4, 'not_found', 'copy', 'absente', 'nouvelle')
        self.refused(5, 'exists', 'copy', 'pgi', 'pgi_suite')
        self.refused(2, 'usage', 'create')
        self.refused(2, 'usage', 'frobnicate')
        self.refused(2, 'usage', 'restore', 'pgi', '--as', 'x', '--replace')
        lab.psql('CREATE DATABASE pas_tryton')
        self.refused(3, 'not_tryton', 'copy', 'pas_tryton', 'nouvelle')
        # what a killed run left behind (its process is gone) is dropped by the next operation;
        # another live run's temporary database is not
        lab.psql('CREATE DATABASE pgi_tmp_st_999999999_deadbeef')
        lab.psql('CREATE DATABASE pgi_tmp_st_%d_0badcafe' % os.getpid())
        self.ok('copy', 'pgi', 'pgi_apres_panne')
        tmp = [r[0] for r in lab.psql("SELECT datname FROM pg_database WHERE datname LIKE 'pgi_tmp_%' ORDER BY 1")]
        self.assertEqual(tmp, ['pgi_tmp_st_%d_0badcafe' % os.getpid()])
        lab.psql('DROP DATABASE pgi_tmp_st_%d_0badcafe' % os.getpid())
        lab.psql('DROP DATABASE pgi_apres_panne')

    # -- copy
    def test_05_copy_and_trytond_connections(self):
        self.warm('pgi')
        # someone working in pgi in Tryton: a session, and trytond's pooled connection to pgi
        sess = self.session_login('pgi', 'admin', pgitest.ADMIN_PASSWORD)
        idle = lab.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgi' AND usename = 'tryton'")[0][0]
        self.assertGreater(int(idle), 0, 'trytond keeps a pooled connection to pgi')
        out = self.ok('copy', 'pgi', 'pgi_copie')
        self.assertEqual(out['method'], 'template')
        self.assertGreaterEqual(out['closed_connections'], 1)
        self.assertIn('released in trytond', out['notice'])
        self.assertEqual(self.sql('pgi_copie', 'SELECT count(*) FROM ir_cron WHERE active'), [['0']])
        self.assertEqual(self.invoices('pgi_copie'), self.invoices('pgi'))
        # the engine released trytond's closed connections: the next request in that session (a
        # read, which trytond does not retry) works the first time
        r = self.session_call('pgi', sess, 'model.res.user.get_preferences', [True, {}])
        self.assertIn('result', r, 'first request in a Tryton session on pgi after its copy: %s' % r)
        self.assertTrue(self.login('pgi', 'admin', pgitest.ADMIN_PASSWORD), 'first login on pgi after its copy')
        # --keep-connections: trytond's connections stay, the copy comes from pg_dump
        self.warm('pgi')
        out = self.ok('copy', 'pgi', 'pgi_copie2', '--keep-connections')
        self.assertEqual((out['method'], out['closed_connections']), ('dump-restore', 0))
        self.assertEqual(self.invoices('pgi_copie2'), self.invoices('pgi'))
        # someone else's session (psql, in a transaction): never closed; dump/restore after the grace
        import psycopg2
        c = psycopg2.connect(dbname='pgi', user='postgres', host=lab.sock, port=lab.pg_port)
        try:
            c.cursor().execute('SELECT count(*) FROM res_user')
            t0 = time.monotonic()
            out = self.ok('copy', 'pgi', 'pgi_copie3', env={'PGI_DB_COPY_GRACE_S': '1'})
            self.assertEqual(out['method'], 'dump-restore')
            self.assertLess(time.monotonic() - t0, 30)
            self.assertEqual(c.closed, 0, 'the psql-like session is still open')
        finally:
            c.close()
        self.assertEqual(self.invoices('pgi_copie3'), self.invoices('pgi'))

    def test_06_a_busy_database_is_refused(self):
        os.makedirs(os.path.join(lab.run_dir, 'locks'), exist_ok=True)
        with open(os.path.join(lab.run_dir, 'locks', 'pgi.lock'), 'a+') as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write('restore pgi, pid 4242, since now\n')
            f.flush()
            err = self.refused(7, 'busy', 'copy', 'pgi', 'pgi_occupee')
            self.assertIn('restore pgi, pid 4242', err['message'])
            self.refused(7, 'busy', 'backup', 'pgi')
            self.refused(7, 'busy', 'drop', 'pgi')
            self.refused(7, 'busy', 'class', '--model', 'pgi', '--students', write('un.csv', b'Durand;Paul\n'))
        self.ok('backup', 'pgi')

    def test_07_data_disk_limit(self):
        err = self.refused(8, 'no_space', 'create', 'trop_plein', env={'PGI_DB_DISK_LIMIT_PCT': '0.5'})
        self.assertRegex(err['message'], r'used \(\d+\.\d %\), it would be \d+\.\d %, above the 0.5 % limit')
        for k in ('needed_bytes', 'used_bytes', 'size_bytes', 'after_pct'):
            self.assertIn(k, err)
        self.refused(8, 'no_space', 'class', '--model', 'pgi', '--students', write('deux.csv', b'Durand;Paul\nPetit;Anne\n'),
                     env={'PGI_DB_DISK_LIMIT_PCT': '0.5'})

    # -- classes
    def test_08_class_per_student(self):
        csv_text = 'NOM;PRÉNOM;CLASSE\nDUPONT;Jean;BTS CG1\nMARTIN;Éloïse;BTS CG1\n\nN\'GUYEN;Anh-Thu;BTS CG1\nDUPONT;Jean;BTS CG1\n'
        path = write('cg1.csv', csv_text.encode('cp1252'))
        out = self.ok('class', '--model', 'pgi', '--students', path)
        names = [d['name'] for d in out['databases']]
        self.assertEqual(names, ['bts_cg1_anh_thu_n_guyen', 'bts_cg1_eloise_martin', 'bts_cg1_jean_dupont', 'bts_cg1_jean_dupont2'])
        self.assertEqual(out['class'], 'BTS CG1')
        self.assertTrue(out['teacher']['created'])
        students = {d['name']: d['students'][0] for d in out['databases']}
        self.assertEqual(students['bts_cg1_eloise_martin']['first_name'], 'Éloïse')
        self.assertEqual(students['bts_cg1_anh_thu_n_guyen']['line'], 5)
        for name in names:
            users = self.sql(name, "SELECT login FROM res_user WHERE login NOT IN ('root') ORDER BY login")
            self.assertEqual(users, sorted([['admin'], ['pgi_health'], ['professeur'], [students[name]['login']]]))
            self.assertEqual(self.sql(name, 'SELECT count(*) FROM ir_cron WHERE active'), [['0']])
            self.assertEqual(self.sql(name, "SELECT value FROM pgi_meta WHERE key = 'class_label'"), [['BTS CG1']])
        # lists and pgi-health read what they need from the databases' comments, without connecting
        comment = json.loads(self.sql('postgres', "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                      "WHERE datname = 'bts_cg1_jean_dupont'")[0][0])
        self.assertEqual(comment['pgi'], {'kind': 'class-student', 'class': 'BTS CG1', 'student': 'jean.dupont', 'login_check': False})
        groups = lambda db, login: {r[0] for r in self.sql(db, 'SELECT d.fs_id FROM "res_user-res_group" ug JOIN res_user u ON u.id = ug."user" '
                                                           "JOIN ir_model_data d ON d.model = 'res.group' AND d.db_id = ug.\"group\" WHERE u.login = '%s'" % login)}
        self.assertIn('group_admin', groups('bts_cg1_jean_dupont', 'professeur'))
        self.assertNotIn('group_admin', groups('bts_cg1_jean_dupont', 'jean.dupont'))
        self.assertIn('group_account', groups('bts_cg1_jean_dupont', 'jean.dupont'))
        self.assertEqual(self.sql('bts_cg1_jean_dupont', "SELECT c.company FROM \"res_user-company_company\" c JOIN res_user u ON u.id = c.\"user\" "
                                  "WHERE u.login = 'jean.dupont'"), [['1']])
        s = students['bts_cg1_jean_dupont']
        self.assertFalse(self.login('bts_cg1_jean_dupont', s['login'], 'pas-le-bon'))
        inv = lab.proteus('bts_cg1_jean_dupont', s['login'], s['password'], pgitest.post_invoice_script('2027-06-01', 'Client de Jean'))
        self.assertEqual((inv['number'], inv['state']), ('FC2027-0002', 'posted'))
        got = lab.proteus('bts_cg1_jean_dupont', 'professeur', out['teacher']['password'], pgitest.READ_INVOICES)
        self.assertEqual(got, [['FC2027-0001', 'posted', '360.00'], ['FC2027-0002', 'posted', '360.00']])
        other = students['bts_cg1_eloise_martin']
        self.assertFalse(self.login('bts_cg1_jean_dupont', other['login'], other['password']), 'a student only has their own database')
        self.assertTrue(self.login('bts_cg1_eloise_martin', other['login'], other['password']))
        # the model was only read
        self.assertEqual(self.sql('pgi', "SELECT count(*) FROM res_user WHERE login = 'professeur'"), [['0']])
        # the same class again: every name taken, nothing made
        self.refused(5, 'exists', 'class', '--model', 'pgi', '--students', path)

    def test_09_class_bad_lists(self):
        bad = 'Nom;Prénom;Classe\nDURAND;Paul;TS1\nPETIT;;TS1\nLEROY;Anne;TS1\nMOREAU;Lu\x07c;TS1\n;;\nROUX;Léa\n'
        err = self.refused(3, 'invalid_csv', 'class', '--model', 'pgi', '--students', write('bad.csv', bad.encode()))
        self.assertEqual([r['line'] for r in err['rows']], [3, 5])
        self.assertIn('line 3', err['message'])
        self.refused(3, 'invalid_csv', 'class', '--model', 'pgi', '--students', write('vide.csv', b''))
        self.refused(3, 'invalid_csv', 'class', '--model', 'pgi', '--students', write('blanc.csv', b'Nom;Prenom\n\n;\n'))
        self.refused(3, 'no_file', 'class', '--model', 'pgi', '--students', os.path.join(lab.dir, 'absent.csv'))
        self.refused(4, 'not_found', 'class', '--model', 'absente', '--students', write('ok.csv', b'Durand;Paul\n'))
        self.refused(3, 'invalid_prefix', 'class', '--model', 'pgi', '--students', write('ok.csv', b'Durand;Paul\n'), '--prefix', 'Classe A')
        self.refused(3, 'invalid_login', 'class', '--model', 'pgi', '--students', write('ok.csv', b'Durand;Paul\n'), '--teacher', 'admin')
        # a student login the model already has: refused after the staging copy, which is dropped
        self.refused(3, 'login_exists', 'class', '--model', 'bts_cg1_jean_dupont', '--students', write('homonyme.csv', b'Dupont;Jean\n'),
                     '--prefix', 'reprise')
        self.assertEqual(self.sql('postgres', "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgi_tmp_%'"), [['0']])
        # a failure in the third student's database (a model whose res_user trigger refuses one
        # login): the class is all or nothing
        self.ok('copy', 'pgi', 'pgi_piege')
        lab.psql("CREATE FUNCTION piege() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.login = 'chloe.cordier' THEN "
                 "RAISE EXCEPTION 'piège'; END IF; RETURN NEW; END $$; CREATE TRIGGER piege BEFORE INSERT ON res_user "
                 "FOR EACH ROW EXECUTE FUNCTION piege()", 'pgi_piege')
        err = self.refused(1, 'failed', 'class', '--model', 'pgi_piege', '--prefix', 'piege', '--students',
                           write('piege.csv', b'Aubert;Anne\nBlanc;Bruno\nCordier;Chlo\xe9\nDuval;David\n'))
        self.assertIn('piège', err['message'])
        self.assertEqual(self.sql('postgres', "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgi_tmp_%' OR datname LIKE 'piege%'"), [['0']])

    def test_09b_class_interrupted_leaves_nothing(self):
        """SIGTERM in the middle of a class (the VM or a service stopping): pgi-db ends
        `interrupted` (130) and leaves none of the class's databases, not even the complete ones,
        nor a temporary one. 60 students, one copy at a time: the signal comes while copies remain."""
        rows = ''.join('Coupe%s;Eleve%d\n' % (chr(65 + i % 26), i) for i in range(60)).encode()
        rc, out, err = pgitest.stop_when(
            [pgitest.PYTHON, os.path.join(pgitest.SBIN, 'pgi-db'), 'class', '--model', 'pgi', '--prefix', 'coupee', '--students',
             write('coupee.csv', rows)], lambda: self.sql('postgres', "SELECT 1 FROM pg_database WHERE datname LIKE 'coupee%' LIMIT 1"),
            lab.env(PGI_DB_COPIES=1), 'pgi-db class')
        self.assertEqual(rc, 130, err[-800:])
        self.assertEqual(json.loads(out.strip().splitlines()[-1])['error']['code'], 'interrupted')
        self.assertEqual(self.sql('postgres', "SELECT datname FROM pg_database WHERE datname LIKE 'coupee%' OR datname LIKE 'pgi\\_tmp\\_%'"), [])

    def test_10_class_shared(self):
        data = '\ufeffNom,Prénom\nBernard,Lucie\nThomas,Hugo\nRobert,Inès\n'.encode('utf-8')
        out = self.ok('class', '--model', 'pgi', '--students', '-', '--mode', 'shared', '--prefix', 'tp_partage', '--teacher', 'mme.durand',
                      stdin=data)
        self.assertEqual([d['name'] for d in out['databases']], ['tp_partage'])
        st = out['databases'][0]['students']
        self.assertEqual([s['login'] for s in st], ['lucie.bernard', 'hugo.thomas', 'ines.robert'])
        for s in st:
            self.assertTrue(self.login('tp_partage', s['login'], s['password']))
        self.assertTrue(self.login('tp_partage', 'mme.durand', out['teacher']['password']))
        self.assertEqual(self.sql('tp_partage', "SELECT value FROM pgi_meta WHERE key = 'kind'"), [['class-shared']])

    # -- backups
    def test_11_backup_drop_restore(self):
        db = 'bts_cg1_jean_dupont'
        before = self.invoices(db)
        self.assertEqual(len(before), 2)
        b = self.ok('backup', db, '--verify')[0]
        self.assertEqual((b['kind'], b['verified']['method'], b['verified']['ok']), ('manual', 'restore', True))
        self.assertTrue(os.path.exists(b['path']))
        self.assertEqual(oct(os.stat(b['path']).st_mode & 0o777), '0o600')
        self.warm(db)  # trytond has pooled connections to it
        d = self.ok('drop', db)
        self.assertEqual(d['final_backup']['kind'], 'final')
        self.assertNotIn(db, lab.databases())
        listed = self.ok('backups', db)
        self.assertEqual([e['kind'] for e in listed], ['final', 'manual'])
        self.assertEqual(listed[0]['id'], d['final_backup']['id'])
        r = self.ok('restore', db)
        self.assertEqual((r['database'], r['replaced'], r['from']['kind']), (db, False, 'final'))
        # the same name again: trytond's connections to the dropped one were released, the first
        # request works
        self.assertTrue(self.login(db, 'admin', pgitest.ADMIN_PASSWORD), 'first login after drop + restore')
        self.assertEqual(self.invoices(db), before, 'the same invoices: number, state, totals')
        s_login = self.sql(db, "SELECT login FROM res_user WHERE login LIKE 'jean.%'")[0][0]
        self.assertEqual(s_login, 'jean.dupont')
        # as a new database: a copy (neutralised, marked)
        r = self.ok('restore', db, '--from', b['id'], '--as', 'jean_copie')
        self.assertEqual(self.invoices('jean_copie'), before)
        self.assertEqual(self.sql('jean_copie', "SELECT value FROM pgi_meta WHERE key = 'kind'"), [['restore']])
        # no --as while it exists: a new name from the backup's date
        r = self.ok('restore', db, '--from', b['id'])
        self.assertRegex(r['database'], r'^bts_cg1_jean_dupont_\d{8}_\d{4}$')
        # in place: what it replaces is kept first
        lab.psql("UPDATE party_party SET name = 'modifié' WHERE id = 1", db)
        self.warm(db)
        r = self.ok('restore', db, '--from', b['id'], '--replace')
        self.assertTrue(r['replaced'])
        self.assertEqual(r['kept']['kind'], 'before-replace')
        self.assertTrue(os.path.exists(r['kept']['path']))
        self.assertNotEqual(self.sql(db, 'SELECT name FROM party_party WHERE id = 1'), [['modifié']])
        self.assertIn('closed', r['notice'])
        self.assertGreaterEqual(r['closed_connections'], 1)
        self.assertTrue(self.login(db, 'admin', pgitest.ADMIN_PASSWORD), 'first login after restore --replace')
        # refusals
        self.refused(4, 'no_backup', 'restore', db, '--from', '20200101T000000Z-manual')
        self.refused(4, 'no_backup', 'restore', 'jamais_sauvegardee')
        self.refused(3, 'invalid_name', 'restore', db, '--as', 'Mauvais Nom')
        self.refused(5, 'exists', 'restore', db, '--as', 'pgi')
        # a damaged dump is not restored
        with open(b['path'], 'r+b') as f:
            f.seek(2000)
            byte = f.read(1)
            f.seek(2000)
            f.write(bytes([byte[0] ^ 0xFF]))
        self.refused(3, 'checksum', 'restore', db, '--from', b['id'], '--as', 'abimee')

    # -- export / import
    def test_12b_restore_in_place_interrupted_puts_the_original_back(self):
        """A restore in place stopped (KeyboardInterrupt, as pgi-db raises it on SIGTERM) just
        after the original was renamed aside, or after the new copy took its name: the original
        is back under its name, with its data, and nothing else is left."""
        script = (
            'import sys, pgidb\n'
            'name, case = sys.argv[1], sys.argv[2]\n'
            'tmp = pgidb.tmp_name("new")\n'
            'pgidb.q("CREATE DATABASE %s" % tmp)\n'
            'real_q = pgidb.q\n'
            'def q(sql, params=None, db=None):\n'
            '    r = real_q(sql, params, db)\n'
            '    if case == "aside" and sql.startswith("ALTER DATABASE %s RENAME TO" % pgidb.quote_ident(name)):\n'
            '        raise KeyboardInterrupt\n'
            '    if case == "taken" and sql.startswith("ALTER DATABASE %s RENAME TO %s" % (pgidb.quote_ident(tmp), pgidb.quote_ident(name))):\n'
            '        raise KeyboardInterrupt\n'
            '    return r\n'
            'pgidb.q = q\n'
            'try:\n'
            '    pgidb._swap(tmp, name, None)\n'
            'except KeyboardInterrupt:\n'
            '    print("interrupted")\n'
            'finally:\n'
            '    pgidb.drop_quietly(tmp)\n')
        for case in ('aside', 'taken'):
            with self.subTest(case=case):
                self.sql('postgres', 'CREATE DATABASE echange_%s' % case)
                self.sql('echange_%s' % case, "CREATE TABLE marque (v text); INSERT INTO marque VALUES ('original')")
                r = subprocess.run([pgitest.PYTHON, '-c', script, 'echange_%s' % case, case], capture_output=True, text=True, env=lab.env(), timeout=120)
                self.assertEqual((r.returncode, r.stdout.strip()), (0, 'interrupted'), r.stderr[-800:])
                self.assertEqual(self.sql('echange_%s' % case, 'SELECT v FROM marque'), [['original']])
                self.assertEqual(self.sql('postgres', "SELECT datname FROM pg_database WHERE datname LIKE 'pgi\\_tmp\\_%'"), [])
                self.sql('postgres', 'DROP DATABASE echange_%s' % case)

    def test_13_export_import(self):
        e = self.ok('export', 'pgi')
        self.assertEqual((e['tryton_series'], e['database']), ('6.0', 'pgi'))
        self.assertTrue(os.path.exists(e['path']) and os.path.exists(e['manifest']))
        i = self.ok('import', e['path'], '--as', 'pgi_importee')
        self.assertEqual(i['series_from'], 'pgi_meta')
        self.assertEqual(self.invoices('pgi_importee'), self.invoices('pgi'))
        self.assertEqual(self.sql('pgi_importee', 'SELECT count(*) FROM ir_cron WHERE active'), [['0']])
        self.assertTrue(self.login('pgi_importee', 'admin', pgitest.ADMIN_PASSWORD))
        self.refused(5, 'exists', 'import', e['path'], '--as', 'pgi')
        self.refused(3, 'invalid_name', 'import', e['path'], '--as', 'Pgi Importée')
        self.refused(3, 'invalid_dump', 'import', write('texte.dump', b'PGDMP? not really\n' * 100), '--as', 'x_texte')
        self.refused(3, 'invalid_dump', 'import', write('vide.dump', b''), '--as', 'x_vide')
        self.refused(3, 'no_file', 'import', os.path.join(lab.dir, 'absent.dump'), '--as', 'x_absent')
        plain = os.path.join(lab.dir, 'plain.sql')
        subprocess.run([lab.pgbin + '/pg_dump', '-h', lab.sock, '-p', lab.pg_port, '-U', 'postgres', '-f', plain, 'pgi'], check=True)
        self.refused(3, 'invalid_dump', 'import', plain, '--as', 'x_sql')
        other = os.path.join(lab.dir, 'autre.dump')
        subprocess.run([lab.pgbin + '/pg_dump', '-Fc', '-h', lab.sock, '-p', lab.pg_port, '-U', 'postgres', '-f', other, 'pas_tryton'], check=True)
        self.refused(3, 'not_tryton', 'import', other, '--as', 'x_autre')
        # a dump that says it comes from another series
        lab.psql("UPDATE pgi_meta SET value = '5.8' WHERE key = 'tryton_series'", 'pgi_copie')
        old = os.path.join(lab.dir, 'ancienne.dump')
        subprocess.run([lab.pgbin + '/pg_dump', '-Fc', '-h', lab.sock, '-p', lab.pg_port, '-U', 'postgres', '-f', old, 'pgi_copie'], check=True)
        err = self.refused(3, 'other_series', 'import', old, '--as', 'x_ancienne')
        self.assertIn('Tryton 5.8', err['message'])
        # one that says nothing: judged on its Tryton tables
        lab.psql('DROP TABLE pgi_meta', 'pgi_copie2')
        mute = os.path.join(lab.dir, 'muette.dump')
        subprocess.run([lab.pgbin + '/pg_dump', '-Fc', '-h', lab.sock, '-p', lab.pg_port, '-U', 'postgres', '-f', mute, 'pgi_copie2'], check=True)
        self.assertEqual(self.ok('import', mute, '--as', 'pgi_muette')['series_from'], 'schema')
        lab.psql('ALTER TABLE ir_session ADD COLUMN device varchar', 'pgi_copie2')
        subprocess.run([lab.pgbin + '/pg_dump', '-Fc', '-h', lab.sock, '-p', lab.pg_port, '-U', 'postgres', '-f', mute, 'pgi_copie2'], check=True)
        err = self.refused(3, 'other_series', 'import', mute, '--as', 'x_muette')
        self.assertIn('ir_session', err['message'])

    # -- list, drop
    def test_14_list_and_drop(self):
        dbs = {d['name']: d for d in self.ok('list')}
        self.assertNotIn('pgi_template_bts', dbs)
        self.assertEqual(dbs['bts_cg1_eloise_martin']['class'], 'BTS CG1')
        self.assertEqual(dbs['bts_cg1_eloise_martin']['kind'], 'class-student')
        self.assertEqual(dbs['pgi']['company'], 'Lycée Jean Moulin')
        self.assertEqual(dbs['pgi']['last_backup']['kind'], 'manual', 'the newest: test_06\'s, after the nightly set')
        self.assertGreater(dbs['pgi']['size'], 1 << 20)
        self.assertIn('account_fr', dbs['pgi']['modules'])
        self.assertFalse(dbs['pas_tryton']['tryton'])
        out = self.ok('drop', 'pgi_muette')
        self.assertTrue(os.path.exists(out['final_backup']['path']))
        self.refused(4, 'not_found', 'drop', 'pgi_muette')

    # -- login check
    def test_15_login_check(self):
        out = self.ok('login-check')
        names = {r['name'] for r in out}
        self.assertIn('pgi', names)
        self.assertIn('pas_tryton', set(lab.databases()))
        self.assertFalse(names & {'bts_cg1_eloise_martin', 'tp_partage', 'pgi_copie', 'pgi_importee', 'pas_tryton'},
                         'teaching copies are not logged into by default')
        self.assertTrue(all(r['ok'] for r in out), out)
        out = self.ok('login-check', 'bts_cg1_eloise_martin')
        self.assertEqual(out[0]['user'], 'ok')
        # the login-check user removed by someone: put back, and the login works
        lab.psql("UPDATE res_user SET active = false WHERE login = 'pgi_health'", 'pgi_bissextile')
        out = self.ok('login-check', 'pgi_bissextile')
        self.assertEqual((out[0]['user'], out[0]['ok']), ('repaired', True))
        secret = os.path.join(lab.data, '.pgi', 'tryton-health.secret')
        self.assertEqual(oct(os.stat(secret).st_mode & 0o777), '0o600')
        rc, out, err = lab.db('login-check', 'pgi', env={'PGI_TRYTON_URL': 'http://127.0.0.1:%d' % pgitest.free_port()})
        self.assertEqual(rc, 1)
        self.assertFalse(out[0]['ok'])
        self.assertIn('URLError', out[0]['error'])
        rc, out, err = lab.db('login-check', 'absente')
        self.assertEqual((rc, out[0]['ok']), (1, False))
        # pgi-health's check
        import importlib.machinery
        import importlib.util
        env = lab.env()
        old = dict(os.environ)
        os.environ.update(env)
        try:
            sys.path.insert(0, pgitest.LIB)
            for m in ('pgilib', 'pgidb'):
                sys.modules.pop(m, None)
            loader = importlib.machinery.SourceFileLoader('pgi_health', os.path.join(pgitest.SBIN, 'pgi-health'))
            health = importlib.util.module_from_spec(importlib.util.spec_from_loader('pgi_health', loader))
            loader.exec_module(health)
            r = health.tryton_login()
        finally:
            os.environ.clear()
            os.environ.update(old)
            sys.path.remove(pgitest.LIB)
        self.assertTrue(r['ok'], r)
        self.assertIn('pgi', [d['name'] for d in r['databases']])

    # -- ids of both Tryton series
    def test_16_ids_from_identity_columns(self):
        # trytond 6.0 gives each table a TABLE_id_seq sequence as the id's default (no OWNED BY);
        # 7.0 (line 2.x) makes the id an identity column (GENERATED BY DEFAULT AS IDENTITY). The
        # engine takes ids from the sequence Tryton itself takes them from, in both cases: the rows
        # it inserts never collide with Tryton's own (the host runs 6.0, so 7.0's columns are made
        # here as trytond 7.0 makes them). A comment, not a docstring: pgi-db.test.ts reads
        # unittest's "NAME (CLASS) ... ok" lines, which a docstring splits.
        self.ok('create', 'pgi_ids')
        lab.psql('CREATE TABLE t70_party (id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name VARCHAR, create_uid INTEGER, '
                 'create_date TIMESTAMP); CREATE SEQUENCE t60_party_id_seq; CREATE TABLE t60_party (id INTEGER PRIMARY KEY '
                 "DEFAULT nextval('t60_party_id_seq'), name VARCHAR)", 'pgi_ids')
        script = (
            'import json, pgidb\n'
            'out = {}\n'
            'with pgidb.session("pgi_ids") as c, c.cursor() as cur:\n'
            '    for t in ("t60_party", "t70_party"):\n'
            '        out[t] = [pgidb.insert(cur, t, {"name": "engine %d" % i}) for i in range(2)]\n'
            'print(json.dumps(out))\n')
        r = subprocess.run([pgitest.PYTHON, '-c', script], capture_output=True, text=True, env=lab.env(), timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr[-1500:])
        ids = json.loads(r.stdout)
        self.assertEqual(ids, {'t60_party': [1, 2], 't70_party': [1, 2]})
        # Tryton's next INSERT (the column's default) takes the id after the engine's
        self.assertEqual(self.sql('pgi_ids', "INSERT INTO t70_party (name) VALUES ('tryton') RETURNING id"), [['3']])
        self.assertEqual(self.sql('pgi_ids', "INSERT INTO t60_party (name) VALUES ('tryton') RETURNING id"), [['3']])
        lab.psql('DROP DATABASE pgi_ids WITH (FORCE)')


if __name__ == '__main__':
    unittest.main()
