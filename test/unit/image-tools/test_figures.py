"""The business figures of a Tryton database (pgifigures.py) and pgi-backup's use of them, run
natively against a throwaway PostgreSQL cluster and a real trytond (pgitest.Lab): invoices are
posted by proteus (a real Tryton client); pgi-backup records the figures in its manifest and
--verify compares them after restoring each dump, so a restore that changes an amount with the
same number of rows is caught.

Run: /usr/bin/python3 -m unittest -v test_figures (as root, in this folder), or through vitest
(figures.test.ts). The tests share one lab and run in order (test_NN_).
"""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgitest  # noqa: E402

sys.path.insert(0, pgitest.LIB)
import pgifigures  # noqa: E402

lab = None


setUpModule, tearDownModule = pgitest.use_lab(globals())


def figures(db):
    rc, out, err = lab.tool('pgi-backup', '--figures', db)
    if rc != 0:
        raise AssertionError('pgi-backup --figures %s failed (%d): %s' % (db, rc, err[-1500:]))
    return out


class Figures(unittest.TestCase):
    maxDiff = None

    def test_01_posted_invoices_and_trial_balance(self):
        rc, out, err = lab.db('create', 'pgi', '--company', 'Lycée Figures', '--fiscal-year', '2027')
        self.assertEqual(rc, 0, err[-1500:])
        empty = figures('pgi')
        self.assertEqual(empty['posted_invoices'], [])
        self.assertEqual(empty['counts']['invoices'], 0)
        self.assertIsNone(empty['counts']['payments'], 'account_payment is not activated: no table, no count')
        for date, customer in (('2027-03-15', 'Client Mars'), ('2027-04-02', 'Client Avril')):
            lab.proteus('pgi', 'admin', pgitest.ADMIN_PASSWORD, pgitest.post_invoice_script(date, customer))
        f = figures('pgi')
        self.assertEqual(f['counts']['invoices'], 2)
        self.assertEqual(f['counts']['invoice_lines'], 2)
        self.assertEqual(f['counts']['parties'], empty['counts']['parties'] + 2)
        self.assertEqual([(i['company'], i['type'], i['state'], i['untaxed'], i['tax'], i['total']) for i in f['posted_invoices']],
                         [('Lycée Figures', 'out', 'posted', '300', '60', '360')] * 2)
        self.assertEqual(sorted(i['number'] for i in f['posted_invoices']), ['FC2027-0001', 'FC2027-0002'])
        posted = [e for e in f['trial_balance'] if e['state'] == 'posted']
        self.assertEqual([(e['company'], e['fiscal_year']) for e in posted], [('Lycée Figures', '2027')])
        # a balanced ledger: 2 × 360 debited to the customer, 2 × 300 credited to 7071, 2 × 60 to VAT
        self.assertEqual((posted[0]['debit'], posted[0]['credit']), ('720', '720'))
        accounts = {a[0]: a[1:] for a in posted[0]['accounts']}
        self.assertEqual(accounts['7071'], ['0', '600'])

    def test_02_backup_records_them_and_verify_compares_them(self):
        rc, out, err = lab.tool('pgi-backup')
        self.assertEqual(rc, 0, err[-1500:])
        mpath = out.strip() if isinstance(out, str) else str(out)
        with open(mpath) as fh:
            m = json.load(fh)
        entry = next(e for e in m['databases'] if e['name'] == 'pgi')
        self.assertEqual(entry['figures'], figures('pgi'))
        rc, out, err = lab.tool('pgi-backup', '--verify', os.path.dirname(mpath))
        self.assertEqual(rc, 0, err[-1500:])
        self.assertEqual([(v['name'], v['ok'], v['figures_checked']) for v in out['verified'] if v['name'] == 'pgi'], [('pgi', True, True)])
        # an amount that differs with the same rows (what a bad migration or restore can do) is caught
        inv = entry['figures']['posted_invoices'][0]
        inv['total'] = '361'
        acct = entry['figures']['trial_balance'][0]['accounts'][0]
        acct[1] = '1' if acct[1] != '1' else '2'
        with open(mpath, 'w') as fh:
            json.dump(m, fh)
        rc, out, err = lab.tool('pgi-backup', '--verify', os.path.dirname(mpath))
        self.assertEqual(rc, 1)
        self.assertIn('business figures differ after restore', err)
        self.assertIn('posted invoice %s' % inv['number'], err)
        self.assertIn('account %s' % acct[0], err)
        # the scratch database is gone whatever the outcome
        self.assertEqual([d for d in lab.databases() if d.startswith('pgi_verify_')], [])

    def test_03_refusals(self):
        rc, out, err = lab.tool('pgi-backup', '--figures', 'no_such_db')
        self.assertEqual(rc, 1)
        self.assertIn('no database no_such_db', err)
        lab.psql('CREATE DATABASE plain_db')
        rc, out, err = lab.tool('pgi-backup', '--figures', 'plain_db')
        self.assertEqual(rc, 1)
        self.assertIn('plain_db is not a Tryton database', err)

    def test_04_differences_are_told_plainly(self):
        a = {'counts': {'parties': 3, 'invoices': 1}, 'trial_balance': [
            {'company': 'C', 'fiscal_year': '2027', 'state': 'posted', 'debit': '10', 'credit': '10', 'accounts': [['411', '10', '0'], ['7071', '0', '10']]}],
            'posted_invoices': [{'company': 'C', 'type': 'out', 'number': 'FC1', 'state': 'posted', 'untaxed': '10', 'tax': '0', 'total': '10'}]}
        self.assertEqual(pgifigures.differences(a, json.loads(json.dumps(a))), [])
        b = json.loads(json.dumps(a))
        b['counts']['parties'] = 4
        b['trial_balance'][0]['accounts'][1] = ['7071', '0', '12']
        b['posted_invoices'] = []
        self.assertEqual(pgifigures.differences(a, b), [
            'parties: 3 rows before, 4 after',
            'trial balance of C, 2027 (posted moves), account 7071: debit/credit 0/10 before, 0/12 after',
            'posted invoice FC1 (C, out): missing',
        ])
        self.assertEqual(len(pgifigures.differences(a, b, limit=1)), 2)
        self.assertEqual(pgifigures.amount('300.0000'), '300')
        self.assertEqual(pgifigures.amount('-0.00'), '0')
        self.assertEqual(pgifigures.amount('12.50'), '12.5')


if __name__ == '__main__':
    unittest.main()
