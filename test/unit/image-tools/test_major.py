"""The major-version upgrade's guest side (pgimajor.py, run by pgi-upgrade when the 2.x OS boots
on a 1.x data disk), run natively against a throwaway PostgreSQL cluster and a real trytond
(pgitest.Lab): every database of a verified pgi-backup is carried across from its dump, the
migration notes' steps and trytond-admin --all run on it, its figures are compared with the
manifest's, and the progress is recorded in the status file the host polls. On this machine the
"new" cluster is the lab's own and Tryton the host's (same versions before and after): what is
proven is the mechanism (restore from the dumps, steps, status, figures, failure, resume), not the
6.0 -> 7.0 schema change, which the QEMU end-to-end test (test/e2e/rollout/major.test.ts) covers.

Run: /usr/bin/python3 -m unittest -v test_major (as root, in this folder), or through vitest
(major.test.ts). The tests share one lab and run in order (test_NN_).
"""
import hashlib
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgitest  # noqa: E402

lab = None
setUpModule, tearDownModule = pgitest.use_lab(globals())

# pgimajor.migrate with a failure injected at one database's step (its hook: tests only)
MIGRATE = '''
import json, sys
import pgimajor
req = json.loads(sys.stdin.read())
fail = req.pop('fail_at', None)
def hook(db, step):
    if fail and [db, step] == fail:
        raise RuntimeError('injected failure')
print(json.dumps(pgimajor.migrate(req, hook)))
'''


def migrate(req):
    r = subprocess.run([pgitest.PYTHON, '-c', MIGRATE], input=json.dumps(req), capture_output=True, text=True, env=lab.env(), timeout=1800)
    return r.returncode, r.stdout, r.stderr


def status():
    with open(os.path.join(lab.data, '.pgi', 'major-migration.json')) as f:
        return json.load(f)


def figures(db):
    rc, out, err = lab.tool('pgi-backup', '--figures', db)
    assert rc == 0, err
    return out


class Major(unittest.TestCase):
    maxDiff = None
    manifest = None

    def test_01_carries_every_database_across_with_the_same_figures(self):
        for db, date in (('classe_a', '2027-03-15'), ('classe_b', '2027-04-02')):
            rc, out, err = lab.db('create', db, '--company', 'Lycée ' + db, '--fiscal-year', '2027')
            self.assertEqual(rc, 0, err[-1500:])
            lab.proteus(db, 'admin', pgitest.ADMIN_PASSWORD, pgitest.post_invoice_script(date, 'Client ' + db))
        before = {db: figures(db) for db in ('classe_a', 'classe_b')}
        rc, out, err = lab.tool('pgi-backup')
        self.assertEqual(rc, 0, err[-1500:])
        mpath = out.strip() if isinstance(out, str) else str(out)
        # not verified yet: refused before anything is dropped
        rc, out, err = migrate({'id': 'r0', 'manifest': mpath, 'from_pg': '15'})
        self.assertNotEqual(rc, 0)
        self.assertIn('was not verified', err)
        self.assertEqual(status()['state'], 'failed')
        self.assertEqual(figures('classe_a'), before['classe_a'])
        rc, out, err = lab.tool('pgi-backup', '--verify', os.path.dirname(mpath))
        self.assertEqual(rc, 0, err[-1500:])
        with open(mpath, 'rb') as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        Major.manifest = (mpath, sha)
        # a row written after the backup: carried across means from the dump, so it is gone after
        lab.psql("UPDATE party_party SET name = 'after the backup' WHERE id = (SELECT min(id) FROM party_party)", db='classe_a')
        rc, out, err = migrate({'id': 'r1', 'manifest': mpath, 'manifest_sha256': sha, 'from_pg': '15'})
        self.assertEqual(rc, 0, err[-3000:])
        self.assertEqual(sorted(json.loads(out.strip().splitlines()[-1]))[:2], ['classe_a', 'classe_b'])
        st = status()
        self.assertEqual(st['state'], 'done')
        for d in st['databases']:
            if d['name'] in ('classe_a', 'classe_b'):
                self.assertEqual(d['step'], 'done')
                self.assertEqual(d['figure_differences'], [])
                self.assertTrue(d['tryton'])
                self.assertIn('6.2:account_invoice_line', d['before_applied'])
                self.assertGreater(d['seconds']['admin'], 0)
        for db in ('classe_a', 'classe_b'):
            self.assertEqual(figures(db), before[db])
        self.assertEqual(lab.psql("SELECT count(*) FROM party_party WHERE name = 'after the backup'", db='classe_a'), [['0']])

    def test_02_a_failure_on_one_database_fails_the_migration_and_says_where(self):
        mpath, sha = Major.manifest
        rc, out, err = migrate({'id': 'r2', 'manifest': mpath, 'manifest_sha256': sha, 'from_pg': '15', 'fail_at': ['classe_b', 'admin']})
        self.assertNotEqual(rc, 0)
        st = status()
        self.assertEqual(st['state'], 'failed')
        self.assertIn('database classe_b, step admin: injected failure', st['error'])
        steps = {d['name']: d['step'] for d in st['databases']}
        self.assertEqual((steps['classe_a'], steps['classe_b']), ('done', 'admin'))

    def test_03_a_run_stopped_mid_way_resumes_the_unfinished_database_from_its_dump(self):
        mpath, sha = Major.manifest
        # same request as test_02 (a reboot after a hard stop): classe_a is kept, classe_b redone
        rc, out, err = migrate({'id': 'r2', 'manifest': mpath, 'manifest_sha256': sha, 'from_pg': '15'})
        self.assertEqual(rc, 0, err[-3000:])
        st = status()
        self.assertEqual((st['state'], st['boots']), ('done', 2))
        self.assertEqual([d['step'] for d in st['databases'] if d['name'] in ('classe_a', 'classe_b')], ['done', 'done'])

    def test_04_figures_that_differ_fail_the_database(self):
        mpath, _ = Major.manifest
        with open(mpath) as f:
            m = json.load(f)
        e = next(e for e in m['databases'] if e['name'] == 'classe_a')
        e['figures']['posted_invoices'][0]['total'] = '361'
        bad = os.path.join(os.path.dirname(mpath), 'manifest-altered.json')
        with open(bad, 'w') as f:
            json.dump(m, f)
        rc, out, err = migrate({'id': 'r4', 'manifest': bad, 'from_pg': '15'})
        self.assertNotEqual(rc, 0)
        st = status()
        self.assertEqual(st['state'], 'failed')
        self.assertIn('database classe_a, step figures: business figures differ', st['error'])
        self.assertIn("'total': '361'", st['error'])


if __name__ == '__main__':
    unittest.main()


CLEAR = '''
import json, sys
import pgimajor
print(json.dumps(pgimajor.clear_stale_xml_fields(sys.argv[1], sys.argv[2])))
'''


class StaleXmlFields(unittest.TestCase):
    """account_fr 7.0 no longer sets the debit type of template 456 (a view account there); the
    step before trytond-admin clears what the 6.0 files wrote and the installed files do not."""

    def test_05_clears_the_fields_the_new_files_no_longer_set(self):
        import shutil
        import tempfile
        db = 'classe_stale'
        rc, out, err = lab.db('create', db, '--company', 'Lycée stale', '--fiscal-year', '2027')
        self.assertEqual(rc, 0, err[-1500:])
        row = "SELECT coalesce(debit_type::text, '-') FROM account_account_template WHERE id = (SELECT db_id FROM ir_model_data WHERE module = 'account_fr' AND fs_id = '456')"
        self.assertNotEqual(lab.psql(row, db=db), [['-']], 'the 6.0 template 456 has a debit type')
        # the installed account_fr as 7.0 ships it: 456 without type nor debit type
        src = '/usr/lib/python3/dist-packages/trytond/modules/account_fr'
        modules = tempfile.mkdtemp(prefix='pgi-modules-')
        try:
            shutil.copytree(src, os.path.join(modules, 'account_fr'), ignore=shutil.ignore_patterns('__pycache__', 'tests', 'locale'))
            xml = os.path.join(modules, 'account_fr', 'account_fr.xml')
            with open(xml) as f:
                text = f.read()
            start = text.index('<record model="account.account.template" id="456">')
            end = text.index('</record>', start)
            text = text[:start] + ('<record model="account.account.template" id="456">\n'
                                   '            <field name="name">Associés - Opérations sur le capital</field>\n'
                                   '            <field name="code">456</field>\n'
                                   '            <field name="type" eval="None"/>\n'
                                   '            <field name="parent" ref="45"/>\n        ') + text[end:]
            with open(xml, 'w') as f:
                f.write(text)
            r = subprocess.run([pgitest.PYTHON, '-c', CLEAR, db, modules], capture_output=True, text=True, env=lab.env(), timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1]), ['account_fr.456:debit_type'])
            self.assertEqual(lab.psql(row, db=db), [['-']])
            values = lab.psql("SELECT \"values\", fs_values FROM ir_model_data WHERE module = 'account_fr' AND fs_id = '456'", db=db)[0]
            for v in values:
                self.assertNotIn('debit_type', v)
                self.assertIn('code', v)
            # another template the new files still type keeps its debit type; a second run clears nothing
            self.assertNotEqual(lab.psql(row.replace("'456'", "'4561'"), db=db), [['-']])
            r = subprocess.run([pgitest.PYTHON, '-c', CLEAR, db, modules], capture_output=True, text=True, env=lab.env(), timeout=300)
            self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1]), [])
        finally:
            shutil.rmtree(modules, ignore_errors=True)
