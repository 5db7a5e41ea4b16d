"""The major-version upgrade of a data disk (image line 1.x -> 2.x: PostgreSQL 15 -> 17, Tryton 6.0
-> 7.0), run by pgi-upgrade at the first boot of the new OS disk. docs/rollout.md, "Major upgrade".

Debian 13 ships no PostgreSQL 15, so pg_upgrade cannot run: the databases are carried across from
the verified dumps that pgi-backup made just before the swap (named by the rollout in REQUEST_FILE,
on the data disk). The old cluster is never written: pgi-datadisk makes its directory read-only
(mode 0500, which also keeps any PostgreSQL from starting on it) and creates this image's cluster
in its own directory beside it. Then, per database, in the order of the backup's manifest:

  restore   CREATE DATABASE + pg_restore (PostgreSQL 17's reads PostgreSQL 15's custom format)
  before    the "Before" SQL of Tryton's migration notes, 6.2 to 7.0, for the modules activated
  admin     trytond-admin --all (Tryton's own schema and data migration)
  after     the "After" steps of the notes (SQL, and the invoice amount caches through Tryton)
  figures   the business figures (pgifigures.py) compared with those the backup recorded

Progress goes to STATUS_FILE (on the data disk: a reboot mid-way resumes from it; the host reads it
over the guest agent). A database whose migration did not finish (a hard stop mid trytond-admin)
is dropped and carried across again from its dump at the next boot; finished ones are kept. The
first failure stops the migration and fails it for the whole establishment: pgi-upgrade records
it, trytond never listens, and the rollout rolls the establishment back to its old OS disk, whose
cluster is as it was.

Tryton's migration notes between 6.0 and 7.0 (docs.tryton.org, "Migration") have steps in the 6.2
and 7.0 sections only; 6.4, 6.6 and 6.8 have none. Steps for modules this image does not ship
(account_payment, product_price_list) are applied when their tables exist, as the notes say."""
import hashlib
import json
import os
import subprocess
import time

from pgilib import *  # noqa: F401,F403
import pgifigures

REQUEST_FILE = STATE_DIR + '/major-upgrade.json'
STATUS_FILE = STATE_DIR + '/major-migration.json'
STEPS = ('restore', 'before', 'admin', 'after', 'figures')

# Tryton's migration notes, "Before" (SQL run before trytond-admin --all), per series, each step
# applied when its table exists (a module not activated has none)
BEFORE = [
    ('6.2', 'ir_model_field', 'ALTER TABLE IF EXISTS "ir_model_field" ADD COLUMN IF NOT EXISTS "access" BOOLEAN'),
    ('6.2', 'account_invoice_line',
     'UPDATE "account_invoice_line" SET "currency" = (SELECT "currency" FROM "account_invoice" '
     'WHERE "id" = "account_invoice_line"."invoice") WHERE "invoice" IS NOT NULL'),
    ('6.2', 'account_invoice_line',
     'UPDATE "account_invoice_line" SET "invoice_type" = (SELECT "type" FROM "account_invoice" '
     'WHERE "id" = "account_invoice_line"."invoice") WHERE "invoice_type" IS NOT NULL AND "invoice" IS NOT NULL'),
    ('6.2', 'account_invoice_line',
     'UPDATE "account_invoice_line" SET "party" = (SELECT "party" FROM "account_invoice" '
     'WHERE "id" = "account_invoice_line"."invoice") WHERE "party" IS NOT NULL AND "invoice" IS NOT NULL'),
    ('7.0', 'account_payment', 'UPDATE "account_payment" SET "account" = NULL WHERE "line" IS NOT NULL'),
]
# Tryton updates a module's records from its XML files but leaves a field that the new files no
# longer name as it was. account_fr 7.0 dropped the debit and credit types of some account
# templates (456 "Associés - Opérations sur le capital" became a view account: type None, no debit
# type), while 7.0 checks that an account template's children share its debit type: trytond-admin
# --all then stops on a 6.0 database with "ParsingError: in record 'account_fr.456'". Before the
# update, the fields below that the 6.0 files set and the installed files no longer set are
# cleared, in the table and in ir_model_data's record of what the files wrote (values, fs_values:
# otherwise Tryton takes the difference for a user's change and leaves the record alone).
STALE_XML_FIELDS = [
    # (module, model, table, fields)
    ('account_fr', 'account.account.template', 'account_account_template', ('debit_type', 'credit_type')),
]
MODULES_DIR = '/usr/lib/python3/dist-packages/trytond/modules'


def module_xml_fields(module, model, modules_dir=MODULES_DIR):
    """{xml id: set of field names} of `model`'s records in the installed module's XML files (the
    files its tryton.cfg lists), or None when the module is not installed."""
    import configparser
    import xml.etree.ElementTree as ET
    base = os.path.join(modules_dir, module)
    cfg = configparser.ConfigParser()
    if not cfg.read(os.path.join(base, 'tryton.cfg')):
        return None
    fields = {}
    for name in cfg.get('tryton', 'xml', fallback='').split():
        for rec in ET.parse(os.path.join(base, name)).iter('record'):
            if rec.get('model') == model:
                fields[rec.get('id')] = {f.get('name') for f in rec.findall('field')}
    return fields


def _without(serialised, names):
    """ir_model_data's serialised values (trytond's dump_values: a JSON list of [field, value],
    sorted, compact) without the fields in `names`."""
    if not serialised:
        return serialised
    pairs = json.loads(serialised)
    return json.dumps([p for p in pairs if p[0] not in names], separators=(',', ':'), sort_keys=True)


def clear_stale_xml_fields(db, modules_dir=MODULES_DIR):
    """Clears, in database `db`, the STALE_XML_FIELDS that the module's files set before and the
    installed files no longer set. Returns ['module.xml_id:field', ...] of what was cleared."""
    cleared = []
    conn = connect(db)
    try:
        with conn, conn.cursor() as cur:
            for module, model, table, names in STALE_XML_FIELDS:
                new = module_xml_fields(module, model, modules_dir)
                if new is None:
                    continue
                cur.execute('SELECT to_regclass(%s)', (table,))
                if cur.fetchone()[0] is None:
                    continue
                cur.execute('SELECT id, fs_id, db_id, "values", fs_values FROM ir_model_data WHERE module = %s AND model = %s',
                            (module, model))
                for data_id, fs_id, db_id, values, fs_values in cur.fetchall():
                    if fs_id not in new:
                        continue
                    written = {p[0] for p in json.loads(fs_values or values or '[]')}
                    stale = [f for f in names if f in written and f not in new[fs_id]]
                    if not stale:
                        continue
                    cur.execute('UPDATE "%s" SET %s WHERE id = %%s' % (table, ', '.join('"%s" = NULL' % f for f in stale)), (db_id,))
                    cur.execute('UPDATE ir_model_data SET "values" = %s, fs_values = %s WHERE id = %s',
                                (_without(values, stale), _without(fs_values, stale), data_id))
                    cleared += ['%s.%s:%s' % (module, fs_id, f) for f in stale]
    finally:
        conn.close()
    return cleared


# "After" in SQL (run after trytond-admin --all)
AFTER_SQL = [
    ('6.2', 'ir_sequence_type', 'ALTER TABLE IF EXISTS "ir_sequence_type" DROP COLUMN IF EXISTS "code"'),
]
# 7.0 "After": the invoices' amount caches, filled through Tryton (trytond-console's lines of the
# notes, as a script: Tryton computes the amounts, no SQL copy of its rules). Run as tryton with
# the database name as argument; a database without account_invoice (or a Tryton without the
# caches) is left as it is.
INVOICE_CACHES = r'''
import sys
from trytond.config import config
config.update_etc(sys.argv[1])
from trytond.pool import Pool
from trytond.transaction import Transaction
db = sys.argv[2]
Pool.start()
pool = Pool(db)
with Transaction().start(db, 0, readonly=True):
    pool.init()
with Transaction().start(db, 0) as transaction:
    Module = pool.get('ir.module')
    if not Module.search([('name', '=', 'account_invoice'), ('state', '=', 'activated')]):
        print('0')
        sys.exit(0)
    Invoice = pool.get('account.invoice')
    if 'untaxed_amount_cache' not in Invoice._fields:
        print('0')
        sys.exit(0)
    invoices = Invoice.search([('state', 'in', ['posted', 'paid'])])
    for invoice in invoices:
        invoice.untaxed_amount_cache = invoice.untaxed_amount
        invoice.tax_amount_cache = invoice.tax_amount
        invoice.total_amount_cache = invoice.total_amount
    Invoice.save(invoices)
    transaction.commit()
    print(len(invoices))
'''


def cluster_dir(version):
    return '%s/postgresql/%s/main' % (DATA, version)


def request():
    """The rollout's request (REQUEST_FILE) when it asks for a migration into this image's
    PostgreSQL from an older cluster that is on the data disk, else None."""
    req = read_json(REQUEST_FILE)
    if not req or not req.get('manifest') or not str(req.get('from_pg', '')).isdigit():
        return None
    if int(req['from_pg']) >= int(PG_VERSION):
        return None
    if not os.path.exists(cluster_dir(req['from_pg']) + '/PG_VERSION'):
        return None
    return req


def request_key(req):
    return hashlib.sha256(('%s|%s|%s' % (req.get('id'), req.get('manifest'), req.get('manifest_sha256'))).encode()).hexdigest()[:16]


def pending(req):
    """True when this request's migration has not finished well yet."""
    st = read_json(STATUS_FILE) or {}
    return not (st.get('key') == request_key(req) and st.get('state') == 'done')


def protect_old_cluster(version):
    """The old cluster read-only: its directory 0500 (no PostgreSQL can start on it, nothing is
    created in it). Idempotent; undone only by a rollback to the old OS (the rollout's reopen)."""
    path = cluster_dir(version)
    if os.path.isdir(path) and (os.stat(path).st_mode & 0o777) != 0o500:
        os.chmod(path, 0o500)
        log('pgimajor: %s is read-only (mode 0500): the disaster copy of the PostgreSQL %s databases' % (path, version))


class Status:
    """STATUS_FILE, written atomically at each step (the host polls it)."""

    def __init__(self, req, manifest):
        old = read_json(STATUS_FILE) or {}
        key = request_key(req)
        if old.get('key') == key:
            self.data = old
            self.data['state'] = 'running'
            self.data['error'] = None
            self.data['boots'] = int(self.data.get('boots') or 1) + 1
        else:
            self.data = {'format': 1, 'key': key, 'id': req.get('id'), 'manifest': req['manifest'], 'from_pg': str(req['from_pg']),
                         'to_pg': PG_VERSION, 'from_version': req.get('from_version'), 'to_version': req.get('to_version'),
                         'state': 'running', 'started_at': iso(now_utc()), 'boots': 1, 'error': None,
                         'databases': [{'name': e['name'], 'step': 'pending', 'seconds': {}} for e in manifest['databases']]}
        self.save()

    def db(self, name):
        for d in self.data['databases']:
            if d['name'] == name:
                return d
        d = {'name': name, 'step': 'pending', 'seconds': {}}
        self.data['databases'].append(d)
        return d

    def save(self):
        self.data['updated_at'] = iso(now_utc())
        write_json(STATUS_FILE, self.data, 0o644)


def _psql_file(path):
    # roles of the old cluster (pg_dumpall --roles-only): SCRAM verifiers included, so the
    # passwords stay the same. Roles this cluster has already (postgres, tryton) make CREATE ROLE
    # fail, which psql reports and goes past; their ALTER ROLE lines still apply
    return run([PG_BIN + '/psql', '-X', '-q', '-h', PG_HOST, '-p', PG_PORT, '-U', 'postgres', '-d', 'postgres', '-f', path], check=False)


def _has_table(db, table):
    return psql("SELECT to_regclass(format('public.%%I', %s)) IS NOT NULL", db=db, params=(table,))[0][0] == 'True'


def _restore(name, dump):
    close(name)
    psql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()', params=(name,))
    # only ever a database of THIS (new) cluster, carried across again from its dump: the old
    # cluster, the disaster copy, is not touched
    psql('DROP DATABASE IF EXISTS %s' % quote_ident(name))
    psql("CREATE DATABASE %s OWNER tryton ENCODING 'UTF8' TEMPLATE template0" % quote_ident(name))
    with open(dump, 'rb') as fh:
        r = subprocess.run([PG_BIN + '/pg_restore', '-h', PG_HOST, '-p', PG_PORT, '-U', 'postgres', '-d', name], stdin=fh,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError('pg_restore failed: %s' % r.stderr.decode(errors='replace').strip()[-500:])


def _last_error(text):
    """The exception lines of a Python traceback (the last one and its cause), else the output's
    last line: what a person reads in the rollout's reason, the whole output being kept
    in a file (_keep_log)."""
    lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
    # a chained exception ("raise ParsingError(...) from e") names its cause first: both are kept
    errors = [line[:300] for line in lines if ' ' not in line.split(':', 1)[0] and line.split(':', 1)[0].endswith(('Error', 'Exception', 'Warning'))]
    if errors:
        return ' <- '.join(reversed(errors[-2:]))
    return lines[-1][:400] if lines else '(no output)'


def _keep_log(db, step, r):
    """The whole output of a failed step, on the data disk beside the status file."""
    path = '%s/major-logs/%s-%s.log' % (STATE_DIR, db, step)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    with open(path, 'w') as f:
        f.write('$ exit %d\n--- stdout\n%s\n--- stderr\n%s\n' % (r.returncode, r.stdout, r.stderr))
    return path


def _migrate_db(entry, base, st, hook):
    name = entry['name']
    d = st.db(name)
    if d.get('step') == 'done':
        return
    tryton = None
    for step in STEPS:
        d['step'] = step
        d.setdefault('started_at', iso(now_utc()))
        st.save()
        if hook:
            hook(name, step)
        t0 = time.time()
        if step == 'restore':
            _restore(name, os.path.join(base, entry['file']))
            tryton = is_tryton_db(name)
            d['tryton'] = tryton
        elif not tryton:
            continue
        elif step == 'before':
            applied = []
            for series, table, sql in BEFORE:
                if _has_table(name, table):
                    psql_script(sql, db=name)
                    applied.append(series + ':' + table)
            d['before_applied'] = applied
            d['stale_xml_fields_cleared'] = clear_stale_xml_fields(name)
        elif step == 'admin':
            close(name)
            r = run_as('tryton', ['trytond-admin', '-c', TRYTOND_CONF, '-d', name, '--all'], check=False)
            if r.returncode != 0:
                raise RuntimeError('trytond-admin --all failed (exit %d): %s (full output: %s)'
                                   % (r.returncode, _last_error(r.stderr or r.stdout), _keep_log(name, 'admin', r)))
        elif step == 'after':
            for series, table, sql in AFTER_SQL:
                if _has_table(name, table):
                    psql_script(sql, db=name)
            close(name)
            out = run_as('tryton', ['/usr/bin/python3', '-c', INVOICE_CACHES, TRYTOND_CONF, name]).stdout.strip().splitlines()
            d['invoice_caches'] = int(out[-1]) if out and out[-1].isdigit() else None
        elif step == 'figures':
            if entry.get('figures'):
                try:
                    diff = pgifigures.differences(entry['figures'], pgifigures.figures(connect(name)))
                finally:
                    close(name)
                d['figure_differences'] = diff
                if diff:
                    raise RuntimeError('business figures differ from the backup\'s: %s' % '; '.join(diff))
            else:
                d['figure_differences'] = None
        d['seconds'][step] = round(time.time() - t0, 1)
        st.save()
    d['step'] = 'done'
    d['finished_at'] = iso(now_utc())
    st.save()


def migrate(req, hook=None):
    """Carries every database of the request's manifest into this image's cluster (see above).
    Returns the names of the databases; raises on the first failure (recorded in STATUS_FILE)."""
    mpath = req['manifest']
    base = os.path.dirname(mpath)
    manifest = read_json(mpath)
    if not manifest or not isinstance(manifest.get('databases'), list):
        raise RuntimeError('the backup manifest %s is missing or not JSON: nothing to carry across' % mpath)
    st = Status(req, manifest)
    try:
        if req.get('manifest_sha256'):
            if sha256_file(mpath) != req['manifest_sha256']:
                raise RuntimeError('the backup manifest %s does not match the sha256 the rollout recorded' % mpath)
        if not os.path.exists(os.path.join(base, 'verified.json')):
            raise RuntimeError('the backup %s was not verified (no verified.json): not carrying it across' % base)
        # every dump checked before the first restore
        for e in manifest['databases']:
            if sha256_file(os.path.join(base, e['file'])) != e['sha256']:
                raise RuntimeError('%s: checksum mismatch, nothing carried across' % e['file'])
        roles = (manifest.get('roles') or {}).get('file')
        if roles and not st.data.get('roles_done'):
            r = _psql_file(os.path.join(base, roles))
            if r.returncode != 0:
                raise RuntimeError('the roles of the old cluster could not be applied: %s' % (r.stderr or r.stdout).strip()[-500:])
            st.data['roles_done'] = True
            st.save()
        for e in manifest['databases']:
            try:
                _migrate_db(e, base, st, hook)
            except Exception as ex:
                d = st.db(e['name'])
                d['error'] = str(ex)[-800:]
                raise RuntimeError('database %s, step %s: %s' % (e['name'], d.get('step'), str(ex)[-600:]))
    except Exception as ex:
        st.data['state'] = 'failed'
        st.data['error'] = str(ex)[-800:]
        st.data['finished_at'] = iso(now_utc())
        st.save()
        raise
    st.data['state'] = 'done'
    st.data['finished_at'] = iso(now_utc())
    st.save()
    return [e['name'] for e in manifest['databases']]
