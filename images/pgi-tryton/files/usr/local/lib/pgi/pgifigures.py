"""The business figures of a Tryton database: what a restore or a migration must leave unchanged.

pgi-backup records them in each backup's manifest and checks them after restoring a dump
(--verify); a major upgrade (Tryton 6.0 -> 7.0, PostgreSQL 15 -> 17) compares the figures of
every database before and after its migration. They are read in SQL, not through Tryton: the
same query gives the same answer on both Tryton series, and no Tryton pool is loaded (slow under
emulation).

- counts: rows of the business tables (parties, products, moves, move lines, invoices, invoice
  lines, payments, fiscal years, periods; None where a module is not activated) — never ir_* or
  translation tables, which a migration rewrites;
- trial_balance: per company, fiscal year and move state, each account's debit and credit totals;
- posted_invoices: per company, each posted or paid invoice's number, type, untaxed amount, tax
  and total (computed from its lines and taxes: Tryton 6.0 stores no total).

Amounts are decimal strings without trailing zeros, so that a column whose scale a migration
changes compares equal when its values do.
"""
from decimal import Decimal

from pgilib import PUBLIC_TABLES_SQL  # the catalog, not information_schema (see there)

BUSINESS_TABLES = (
    ('parties', 'party_party'),
    ('products', 'product_template'),
    ('moves', 'account_move'),
    ('move_lines', 'account_move_line'),
    ('invoices', 'account_invoice'),
    ('invoice_lines', 'account_invoice_line'),
    ('payments', 'account_payment'),
    ('fiscal_years', 'account_fiscalyear'),
    ('periods', 'account_period'),
)

_TRIAL_BALANCE = '''
SELECT cp.name, fy.name, m.state, coalesce(a.code, a.name), sum(l.debit), sum(l.credit)
  FROM account_move_line l
  JOIN account_move m ON m.id = l.move
  JOIN account_period p ON p.id = m.period
  JOIN account_fiscalyear fy ON fy.id = p.fiscalyear
  JOIN account_account a ON a.id = l.account
  JOIN company_company c ON c.id = m.company
  JOIN party_party cp ON cp.id = c.party
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4
'''

_POSTED_INVOICES = '''
SELECT cp.name, i.type, i.number, i.state,
       coalesce((SELECT sum(il.quantity * il.unit_price) FROM account_invoice_line il
                  WHERE il.invoice = i.id AND il.type = 'line'), 0),
       coalesce((SELECT sum(t.amount) FROM account_invoice_tax t WHERE t.invoice = i.id), 0)
  FROM account_invoice i
  JOIN company_company c ON c.id = i.company
  JOIN party_party cp ON cp.id = c.party
 WHERE i.state IN ('posted', 'paid')
 ORDER BY 1, 2, 3
'''


def amount(v):
    """A numeric value as a decimal string without trailing zeros ('300', '12.5', '-0.01')."""
    d = Decimal(v or 0)
    s = format(d.normalize(), 'f')
    return '0' if s in ('-0', '0') else s


def figures(conn):
    """The figures of the database `conn` is connected to (psycopg2 connection)."""
    with conn.cursor() as cur:
        cur.execute(PUBLIC_TABLES_SQL)
        present = {r[0] for r in cur.fetchall()}
        counts = {}
        for key, table in BUSINESS_TABLES:
            if table in present:
                cur.execute('SELECT count(*) FROM "%s"' % table)
                counts[key] = cur.fetchone()[0]
            else:
                counts[key] = None
        trial = []
        if {'account_move_line', 'account_move', 'account_period', 'account_fiscalyear', 'account_account',
                'company_company', 'party_party'} <= present:
            cur.execute(_TRIAL_BALANCE)
            by_key = {}
            for company, fy, state, account, debit, credit in cur.fetchall():
                k = (company, fy, state)
                if k not in by_key:
                    by_key[k] = {'company': company, 'fiscal_year': fy, 'state': state, 'debit': Decimal(0), 'credit': Decimal(0), 'accounts': []}
                e = by_key[k]
                e['accounts'].append([account, amount(debit), amount(credit)])
                e['debit'] += Decimal(debit or 0)
                e['credit'] += Decimal(credit or 0)
            for e in by_key.values():
                e['debit'], e['credit'] = amount(e['debit']), amount(e['credit'])
                trial.append(e)
        invoices = []
        if {'account_invoice', 'account_invoice_line', 'account_invoice_tax', 'company_company', 'party_party'} <= present:
            cur.execute(_POSTED_INVOICES)
            for company, type_, number, state, untaxed, tax in cur.fetchall():
                untaxed, tax = Decimal(untaxed or 0), Decimal(tax or 0)
                invoices.append({'company': company, 'type': type_, 'number': number, 'state': state,
                                 'untaxed': amount(untaxed), 'tax': amount(tax), 'total': amount(untaxed + tax)})
    return {'format': 1, 'counts': counts, 'trial_balance': trial, 'posted_invoices': invoices}


def differences(before, after, limit=20):
    """What differs between two figures (lines a person can read), at most `limit` of them."""
    out = []
    for key, _ in BUSINESS_TABLES:
        a, b = before['counts'].get(key), after['counts'].get(key)
        if a != b:
            out.append('%s: %s rows before, %s after' % (key, a, b))

    def tb_index(fig):
        return {(e['company'], e['fiscal_year'], e['state']): e for e in fig['trial_balance']}
    tb_a, tb_b = tb_index(before), tb_index(after)
    for k in sorted(set(tb_a) | set(tb_b)):
        ea, eb = tb_a.get(k), tb_b.get(k)
        where = 'trial balance of %s, %s (%s moves)' % k
        if ea is None or eb is None:
            out.append('%s: %s' % (where, 'appeared' if ea is None else 'missing'))
            continue
        acc_a = {r[0]: r[1:] for r in ea['accounts']}
        acc_b = {r[0]: r[1:] for r in eb['accounts']}
        for code in sorted(set(acc_a) | set(acc_b)):
            if acc_a.get(code) != acc_b.get(code):
                out.append('%s, account %s: debit/credit %s before, %s after' % (where, code, '/'.join(acc_a.get(code) or ['-', '-']),
                                                                                  '/'.join(acc_b.get(code) or ['-', '-'])))

    def inv_index(fig):
        return {(e['company'], e['type'], e['number']): e for e in fig['posted_invoices']}
    in_a, in_b = inv_index(before), inv_index(after)
    for k in sorted(set(in_a) | set(in_b), key=lambda t: tuple(str(x) for x in t)):
        ia, ib = in_a.get(k), in_b.get(k)
        if ia is None or ib is None:
            out.append('posted invoice %s (%s, %s): %s' % (k[2], k[0], k[1], 'appeared' if ia is None else 'missing'))
        elif ia != ib:
            out.append('posted invoice %s (%s): %s before, %s after' % (k[2], k[0], {f: ia[f] for f in ('state', 'untaxed', 'tax', 'total')},
                                                                        {f: ib[f] for f in ('state', 'untaxed', 'tax', 'total')}))
    if len(out) > limit:
        out = out[:limit] + ['… and %d more differences' % (len(out) - limit)]
    return out
