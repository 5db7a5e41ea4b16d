"""Harness for the image tools' tests and bench: the PGI image's guest tools (pgi-db, pgi-backup,
pgi-health's login check) run natively on this machine against a throwaway PostgreSQL cluster and a
real trytond, both in a temporary folder, with the template database built by the image's own
make-template. Needs root (clusters run as postgres, trytond as tryton) and Debian's postgresql,
tryton-server, the recipe's tryton-modules-* and tryton-proteus (scripts/install-deps.sh --test).

The template takes minutes to build; it is kept in PGI_TEST_CACHE (default
/var/tmp/pgi-test-cache) under make-template's own key (installed packages, the scripts, the
modules, SOURCE_DATE_EPOCH), so later runs start in seconds.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..', '..'))
FILES = os.path.join(REPO, 'images', 'pgi-tryton', 'files')
# PGI_TEST_LIB: another copy of /usr/local/lib/pgi (to check that a test fails without a fix)
LIB = os.environ.get('PGI_TEST_LIB') or os.path.join(FILES, 'usr', 'local', 'lib', 'pgi')
SBIN = os.path.join(FILES, 'usr', 'local', 'sbin')
PYTHON = '/usr/bin/python3'  # Debian's: trytond, psycopg2, passlib, proteus live there
MODULES = ['account_fr', 'account_invoice', 'account_product', 'company', 'party', 'product', 'sale', 'purchase', 'stock']
# 2026-01-01T00:00:00Z: the template's fiscal year is 2026
EPOCH = os.environ.get('PGI_TEST_SOURCE_DATE_EPOCH', '1767225600')
ADMIN_PASSWORD = 'admin-pgi-test-1'


def missing_prerequisites():
    """Why this machine cannot run the suite, or None."""
    if os.geteuid() != 0:
        return 'needs root (PostgreSQL clusters run as postgres, trytond as tryton)'
    if not any(os.path.exists('/usr/lib/postgresql/%s/bin/postgres' % v) for v in os.listdir('/usr/lib/postgresql')) \
            if os.path.isdir('/usr/lib/postgresql') else True:
        return 'needs Debian\'s postgresql server package'
    for mod in ('trytond', 'proteus', 'psycopg2', 'passlib'):
        r = subprocess.run([PYTHON, '-c', 'import %s' % mod], capture_output=True)
        if r.returncode != 0:
            return 'needs %s for %s (tryton-server, tryton-proteus, python3-psycopg2)' % (mod, PYTHON)
    for m in MODULES:
        if not os.path.exists('/usr/lib/python3/dist-packages/trytond/modules/%s/tryton.cfg' % m):
            return 'needs tryton-modules-%s' % m.replace('_', '-')
    return None


def stop_when(args, ready, env, what, timeout=300):
    """Starts `args`, sends it SIGTERM as soon as ready() is true (polled every 50 ms), and returns
    (exit status, stdout, stderr) once it has ended. AssertionError when it ends first, or when
    ready() is still false after `timeout` seconds: the signal would not have come mid-way."""
    import signal
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if p.poll() is not None:
                raise AssertionError('%s ended before the signal was due: %s' % (what, p.stderr.read().decode()[-800:]))
            if time.monotonic() > deadline:
                raise AssertionError('%s: still not ready for the signal after %d s' % (what, timeout))
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out.decode(), err.decode()


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Lab:
    """A temporary PostgreSQL cluster + trytond + the data-disk layout the tools expect."""

    def __init__(self, fsync=False):
        import atexit
        import signal
        atexit.register(self.stop)
        # a killed run (vitest's timeout, Ctrl-C) still stops the cluster and trytond it started
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: sys.exit(128 + sig))
        self.fsync = fsync
        self.dir = tempfile.mkdtemp(prefix='pgi-db-test.')
        os.chmod(self.dir, 0o755)
        self.sock = os.path.join(self.dir, 'sock')
        self.pgdata = os.path.join(self.dir, 'pg')
        self.data = os.path.join(self.dir, 'data')
        self.run_dir = os.path.join(self.dir, 'run')
        self.templates = os.path.join(self.dir, 'templates')
        self.pg_port = str(free_port())
        self.web_port = free_port()
        self.pgbin = '/usr/lib/postgresql/%s/bin' % max((v for v in os.listdir('/usr/lib/postgresql') if v.isdigit()), key=int)
        self.trytond = None
        self.started = False

    # -- setup
    def start(self):
        for d in (self.sock, self.data, self.run_dir, self.templates, os.path.join(self.data, '.pgi'), os.path.join(self.data, 'backups')):
            os.makedirs(d, exist_ok=True)
        subprocess.run(['chown', 'postgres', self.sock, self.dir], check=True)
        os.chmod(self.templates, 0o755)
        self.build_template()
        subprocess.run(['runuser', '-u', 'postgres', '--', self.pgbin + '/initdb', '--no-sync', '-D', self.pgdata, '--encoding=UTF8',
                        '--locale=C.UTF-8', '--auth-local=trust'], check=True, capture_output=True)
        # as the image's recipe does: the tryton role, then the template database (seed-cluster)
        subprocess.run(['runuser', '-u', 'postgres', '--', self.pgbin + '/postgres', '--single', '-D', self.pgdata, 'postgres'],
                       input=b'CREATE ROLE tryton LOGIN CREATEDB;\n', check=True, capture_output=True)
        r = subprocess.run(['runuser', '-u', 'postgres', '--', 'env', 'PGI_TEMPLATES=' + self.templates, PYTHON, '-W', 'ignore',
                            os.path.join(LIB, 'seed-cluster'), self.pgdata, EPOCH], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError('seed-cluster failed:\n%s' % r.stderr[-3000:])
        opts = "-c listen_addresses='' -c unix_socket_directories='%s' -p %s -c fsync=%s -c max_connections=60" % (
            self.sock, self.pg_port, 'on' if self.fsync else 'off')
        subprocess.run(['runuser', '-u', 'postgres', '--', self.pgbin + '/pg_ctl', '-D', self.pgdata, '-s', '-w', '-l',
                        os.path.join(self.dir, 'pg.log'), '-o', opts, 'start'], check=True)
        self.started = True
        filestore = os.path.join(self.dir, 'filestore')
        os.makedirs(filestore, exist_ok=True)
        subprocess.run(['chown', 'tryton', filestore], check=True)
        with open(os.path.join(self.dir, 'trytond.conf'), 'w') as f:
            f.write('[web]\nlisten = 127.0.0.1:%d\n[database]\nuri = postgresql://tryton@/?host=%s&port=%s\npath = %s\nlanguage = fr\n'
                    '[session]\ntimeout = 3600\n' % (self.web_port, self.sock, self.pg_port, filestore))
        os.chmod(os.path.join(self.dir, 'trytond.conf'), 0o644)
        with open(os.path.join(self.dir, 'image.json'), 'w') as f:
            json.dump({'name': 'pgi-tryton', 'version': '0.0.0-test', 'ports': {}}, f)
        # what pgi-configure keeps on the data disk: the admin password's hash
        h = subprocess.run([PYTHON, '-c', 'import sys; sys.path.insert(0, %r); import pgilib; print(pgilib.tryton_password_hash(sys.stdin.read()))' % LIB],
                           input=ADMIN_PASSWORD, capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(self.data, '.pgi', 'tryton-admin.hash'), 'w') as f:
            f.write(h + '\n')
        self.start_trytond()

    def build_template(self):
        cache = os.environ.get('PGI_TEST_CACHE', '/var/tmp/pgi-test-cache')
        os.makedirs(cache, exist_ok=True)
        env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, PGI_BUILD_CACHE=cache, PATH='/usr/sbin:/usr/bin:/sbin:/bin')
        t0 = time.monotonic()
        r = subprocess.run(['sh', os.path.join(LIB, 'make-template'), os.path.join(self.templates, 'bts.dump')] + MODULES,
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError('make-template failed:\n%s' % r.stderr[-3000:])
        self.template_seconds = round(time.monotonic() - t0, 1)
        self.template_cached = 'from the build cache' in r.stderr

    def start_trytond(self):
        log = open(os.path.join(self.dir, 'trytond.log'), 'w')
        self.trytond = subprocess.Popen(['runuser', '-u', 'tryton', '--', PYTHON, '-W', 'ignore', '/usr/bin/trytond', '-c',
                                         os.path.join(self.dir, 'trytond.conf')], stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                self.rpc('', 'common.server.version', [])
                return
            except Exception:
                if self.trytond.poll() is not None:
                    raise RuntimeError('trytond exited: see %s/trytond.log' % self.dir)
                time.sleep(0.3)
        raise RuntimeError('trytond did not answer on port %d' % self.web_port)

    def stop(self):
        if getattr(self, 'stopped', False):
            return
        self.stopped = True
        if self.trytond and self.trytond.poll() is None:
            os.killpg(self.trytond.pid, 15)
            try:
                self.trytond.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.trytond.pid, 9)
        if self.started:
            subprocess.run(['runuser', '-u', 'postgres', '--', self.pgbin + '/pg_ctl', '-D', self.pgdata, '-s', '-m', 'immediate', '-w', 'stop'],
                           capture_output=True)
        if not os.environ.get('PGI_TEST_KEEP'):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- use
    def env(self, **extra):
        e = dict(os.environ, PGI_DATA=self.data, PGI_RUN_DIR=self.run_dir, PGI_IMAGE_JSON=os.path.join(self.dir, 'image.json'),
                 PGI_TRYTOND_CONF=os.path.join(self.dir, 'trytond.conf'), PGI_PGHOST=self.sock, PGI_PGPORT=self.pg_port,
                 PGI_TEMPLATES=self.templates, PGI_TRYTON_URL='http://127.0.0.1:%d' % self.web_port, PGI_LIB=LIB, PYTHONPATH=LIB,
                 PYTHONWARNINGS='ignore')
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def tool(self, name, *args, stdin=None, env=None):
        """Runs a guest tool; returns (exit status, parsed JSON stdout or None, stderr)."""
        r = subprocess.run([PYTHON, os.path.join(SBIN, name)] + [str(a) for a in args], input=stdin, capture_output=True,
                           env=self.env(**(env or {})), timeout=900)
        try:
            out = json.loads(r.stdout.decode().strip().splitlines()[-1]) if r.stdout.strip() else None
        except ValueError:
            out = r.stdout.decode()
        return r.returncode, out, r.stderr.decode()

    def db(self, *args, **kw):
        return self.tool('pgi-db', *args, **kw)

    def psql(self, sql, db='postgres'):
        r = subprocess.run([self.pgbin + '/psql', '-h', self.sock, '-p', self.pg_port, '-U', 'postgres', '-d', db, '-XAtq',
                            '-v', 'ON_ERROR_STOP=1', '-F', '\t', '-c', sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError('psql: %s' % r.stderr)
        return [line.split('\t') for line in r.stdout.splitlines()]

    def databases(self):
        return sorted(r[0] for r in self.psql("SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"))

    def rpc(self, db, method, params):
        body = json.dumps({'id': 1, 'method': method, 'params': params}).encode()
        req = urllib.request.Request('http://127.0.0.1:%d/%s' % (self.web_port, (db + '/') if db else ''), data=body,
                                     headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def proteus(self, db, login, password, script, timeout=300):
        """Runs `script` in Debian's proteus (a real Tryton client: XML-RPC to the lab's trytond,
        logged in as login/password on db); returns its stdout's last line as JSON."""
        prog = ('import json, sys, datetime\nfrom decimal import Decimal\nfrom proteus import config, Model, Wizard\n'
                'cfg = config.set_xmlrpc(%r)\n' % ('http://%s:%s@127.0.0.1:%d/%s/' % (urllib.request.quote(login, safe=''),
                                                                                          urllib.request.quote(password, safe=''), self.web_port, db))
                + script)
        r = subprocess.run([PYTHON, '-W', 'ignore', '-c', prog], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError('proteus as %s on %s failed:\n%s' % (login, db, r.stderr[-3000:]))
        return json.loads(r.stdout.strip().splitlines()[-1])



def use_lab(module_globals):
    """setUpModule and tearDownModule for a suite whose tests use its module-level `lab`:
    `setUpModule, tearDownModule = pgitest.use_lab(globals())`."""
    def set_up():
        module_globals['lab'] = start_lab()

    def tear_down():
        if module_globals.get('lab'):
            module_globals['lab'].stop()
    return set_up, tear_down


def start_lab():
    """A started Lab for a suite's setUpModule: skips the suite (unittest.SkipTest, with the reason)
    on a machine without what it needs; stops what it started when starting fails."""
    import unittest
    why = missing_prerequisites()
    if why:
        raise unittest.SkipTest(why)
    lab = Lab()
    t0 = time.monotonic()
    try:
        lab.start()
    except BaseException:
        lab.stop()
        raise
    sys.stderr.write('lab ready in %.1f s (template %s, %.1f s)\n' % (time.monotonic() - t0, 'from cache' if lab.template_cached else 'built',
                                                                       lab.template_seconds))
    return lab

# proteus: a customer invoice (product, customer, TVA 20 % from account_fr's taxes), posted on
# DATE: the script the qemu end-to-end tests run too (test/helpers/post_invoice.py)
with open(os.path.join(REPO, 'test', 'helpers', 'post_invoice.py')) as _f:
    POST_INVOICE = _f.read()


def post_invoice_script(date, customer):
    return 'd = %r\n' % {'date': date, 'party': customer} + POST_INVOICE


READ_INVOICES = r'''
Invoice = Model.get('account.invoice')
print(json.dumps(sorted([[i.number, i.state, str(i.total_amount)] for i in Invoice.find([('type', '=', 'out')])], key=str)))
'''
