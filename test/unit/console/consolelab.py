"""A native lab for the teachers' console: the image's own files (pgi-console, its web application
and job runner, the database engine, pgi-tls, nginx's site) running on this machine against a
throwaway PostgreSQL cluster, a real trytond serving sao, and nginx in front of both over HTTPS,
all on loopback, in a temporary folder. Built on test/unit/image-tools/pgitest.py (the engine's
harness: template database, trytond, proteus).

Differences from the VM, and why: every process runs as root here (the VM runs the console as the
pgi_console user); PostgreSQL authenticates the local socket with "trust" for every role, which is
what peer authentication gives the console's user in the VM (the role is what matters, and it is
the VM's: pgi_console, made by `pgi-console setup`, no superuser); TCP on 127.0.0.1 asks SCRAM
passwords, as in the VM (the AMI's login is checked there).

Used by test_console.py (Python, the application's rules) and, as `python3 consolelab.py serve`,
by console-browser.test.ts (chromium): it prints one JSON line with the lab's addresses and
credentials, and stops everything when its stdin closes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'image-tools'))
import pgitest  # noqa: E402

REPO = pgitest.REPO
FILES = pgitest.FILES
LIB = pgitest.LIB
SBIN = pgitest.SBIN
PYTHON = pgitest.PYTHON
SITE = os.path.join(FILES, 'etc', 'nginx', 'sites-available', 'pgi')
SAO_ROOT = '/usr/share/tryton-sao/www'
AMI_LOGIN = 'pgi_admin'
AMI_PASSWORD = 'Ami-secret-pgi-test-42'


def missing_prerequisites():
    why = pgitest.missing_prerequisites()
    if why:
        return why
    for mod in ('flask', 'waitress', 'argon2', 'cryptography'):
        r = subprocess.run([PYTHON, '-c', 'import %s' % mod], capture_output=True)
        if r.returncode != 0:
            return 'needs %s for %s (python3-flask, python3-waitress, python3-argon2, python3-cryptography)' % (mod, PYTHON)
    if not shutil.which('nginx') and not os.path.exists('/usr/sbin/nginx'):
        return 'needs nginx (nginx-light)'
    if not os.path.exists(os.path.join(SAO_ROOT, 'index.html')):
        return 'needs tryton-sao'
    if not shutil.which('openssl'):
        return 'needs openssl'
    return None


class ConsoleLab(pgitest.Lab):
    def __init__(self):
        super().__init__()
        self.pg_port = str(pgitest.free_port())
        self.http_port = pgitest.free_port()
        self.https_port = pgitest.free_port()
        self.console_port = pgitest.free_port()
        self.console_dir = os.path.join(self.data, 'console')
        self.tls_dir = os.path.join(self.dir, 'tls')
        self.procs = {}

    # -- setup
    def start(self, services=True):
        """Everything; with services=False, no nginx, web application or worker (test_console.py
        drives the application in-process and runs jobs itself)."""
        for d in (self.sock, self.data, self.run_dir, self.templates, os.path.join(self.data, '.pgi'), os.path.join(self.data, 'backups')):
            os.makedirs(d, exist_ok=True)
        subprocess.run(['chown', 'postgres', self.sock, self.dir], check=True)
        self.build_template()
        subprocess.run(['runuser', '-u', 'postgres', '--', self.pgbin + '/initdb', '--no-sync', '-D', self.pgdata, '--encoding=UTF8',
                        '--locale=C.UTF-8', '--auth-local=trust', '--auth-host=scram-sha-256'], check=True, capture_output=True)
        opts = "-c listen_addresses='127.0.0.1' -c unix_socket_directories='%s' -p %s -c fsync=off -c max_connections=80" % (self.sock, self.pg_port)
        subprocess.run(['runuser', '-u', 'postgres', '--', self.pgbin + '/pg_ctl', '-D', self.pgdata, '-s', '-w', '-l',
                        os.path.join(self.dir, 'pg.log'), '-o', opts, 'start'], check=True)
        self.started = True
        self.psql('CREATE ROLE tryton LOGIN CREATEDB')
        # what pgi-configure makes for the AMI's SQL administrator (its SCRAM verifier, computed here)
        verifier = subprocess.run([PYTHON, '-c', 'import sys; sys.path.insert(0, %r); import pgilib; print(pgilib.scram_sha256(sys.stdin.read()))' % LIB],
                                  input=AMI_PASSWORD, capture_output=True, text=True, check=True).stdout.strip()
        self.psql("CREATE ROLE %s LOGIN CREATEDB CREATEROLE PASSWORD '%s'; GRANT tryton TO %s" % (AMI_LOGIN, verifier, AMI_LOGIN))
        filestore = os.path.join(self.dir, 'filestore')
        os.makedirs(filestore, exist_ok=True)
        subprocess.run(['chown', 'tryton', filestore], check=True)
        with open(os.path.join(self.dir, 'trytond.conf'), 'w') as f:
            f.write('[web]\nlisten = 127.0.0.1:%d\nroot = %s\n[database]\nuri = postgresql://tryton@/?host=%s&port=%s\npath = %s\nlanguage = fr\n'
                    'list = True\n[session]\ntimeout = 3600\n' % (self.web_port, SAO_ROOT, self.sock, self.pg_port, filestore))
        os.chmod(os.path.join(self.dir, 'trytond.conf'), 0o644)
        with open(os.path.join(self.dir, 'image.json'), 'w') as f:
            json.dump({'name': 'pgi-tryton', 'version': '0.0.0-test', 'ports': {}}, f)
        h = subprocess.run([PYTHON, '-c', 'import sys; sys.path.insert(0, %r); import pgilib; print(pgilib.tryton_password_hash(sys.stdin.read()))' % LIB],
                           input=pgitest.ADMIN_PASSWORD, capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(self.data, '.pgi', 'tryton-admin.hash'), 'w') as f:
            f.write(h + '\n')
        self.start_trytond()
        out = self.console('setup', '--wait-postgresql', '30')
        assert out[0] == 0, out
        if services:
            self.run_tool(['pgi-tls'], check=True)
            self.start_nginx()
            self.start_console()

    def env(self, **extra):
        e = super().env(**extra)
        e.update(PGI_PGPORT=self.pg_port, PGI_CONSOLE_DIR=self.console_dir, PGI_CONSOLE_LISTEN='127.0.0.1:%d' % self.console_port,
                 PGI_CONSOLE_PG_TCP_PORT=self.pg_port, PGI_CONSOLE_USER='root', PGI_TLS_CERT=os.path.join(self.tls_dir, 'server.crt'),
                 PGI_TLS_DIR=self.tls_dir, PGI_TLS_SAVED=os.path.join(self.data, '.pgi', 'tls'), PGI_TLS_JSON=os.path.join(self.run_dir, 'tls.json'),
                 PGI_TLS_ASSUME_DATA='1', PGI_HTTPS_URL='https://127.0.0.1:%d' % self.https_port, PGI_HTTP_URL='http://127.0.0.1:%d' % self.http_port)
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def run_tool(self, args, check=False, stdin=None, env=None):
        r = subprocess.run([os.path.join(SBIN, args[0])] + [str(a) for a in args[1:]], input=stdin, capture_output=True,
                           env=self.env(**(env or {})), timeout=600)
        if check and r.returncode != 0:
            raise RuntimeError('%s failed: %s' % (args[0], r.stderr.decode()[-2000:]))
        return r

    def console(self, *args, env=None):
        """pgi-console ARGS: (exit status, JSON stdout, stderr)."""
        r = subprocess.run([PYTHON, os.path.join(SBIN, 'pgi-console')] + [str(a) for a in args], capture_output=True,
                           env=self.env(**(env or {})), timeout=600)
        try:
            out = json.loads(r.stdout.decode().strip().splitlines()[-1]) if r.stdout.strip() else None
        except ValueError:
            out = r.stdout.decode()
        return r.returncode, out, r.stderr.decode()

    def start_nginx(self):
        """nginx with the image's own site, its listen addresses and upstreams moved to this lab's."""
        site = open(SITE).read()
        site = site.replace('listen 80 default_server;', 'listen 127.0.0.1:%d default_server;' % self.http_port)
        site = site.replace('listen 443 ssl default_server;', 'listen 127.0.0.1:%d ssl default_server;' % self.https_port)
        site = '\n'.join(ln for ln in site.splitlines() if 'listen [::]' not in ln)
        site = site.replace('127.0.0.1:8000', '127.0.0.1:%d' % self.web_port).replace('127.0.0.1:8010', '127.0.0.1:%d' % self.console_port)
        site = site.replace('/etc/pgi/tls/', self.tls_dir + '/')
        assert str(self.https_port) in site and str(self.console_port) in site
        ndir = os.path.join(self.dir, 'nginx')
        os.makedirs(ndir, exist_ok=True)
        with open(os.path.join(ndir, 'pgi.conf'), 'w') as f:
            f.write(site)
        conf = os.path.join(ndir, 'nginx.conf')
        with open(conf, 'w') as f:
            f.write('daemon off;\nworker_processes 1;\npid %(d)s/nginx.pid;\nerror_log %(d)s/error.log;\nevents { worker_connections 256; }\n'
                    'http {\n include /etc/nginx/mime.types;\n access_log %(d)s/access.log;\n client_body_temp_path %(d)s/body;\n'
                    ' proxy_temp_path %(d)s/proxy;\n fastcgi_temp_path %(d)s/fcgi;\n uwsgi_temp_path %(d)s/uwsgi;\n scgi_temp_path %(d)s/scgi;\n'
                    ' include %(d)s/pgi.conf;\n}\n' % {'d': ndir})
        r = subprocess.run(['nginx', '-t', '-q', '-c', conf], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError('nginx -t: %s' % r.stderr)
        self.procs['nginx'] = subprocess.Popen(['nginx', '-c', conf], stdout=subprocess.DEVNULL, stderr=open(os.path.join(ndir, 'stderr.log'), 'w'),
                                               start_new_session=True)
        self.wait_port(self.https_port, 'nginx')

    def start_console(self):
        for name, cmd in (('web', 'serve'), ('worker', 'worker')):
            log = open(os.path.join(self.dir, 'console-%s.log' % name), 'w')
            self.procs[name] = subprocess.Popen([PYTHON, os.path.join(SBIN, 'pgi-console'), cmd], env=self.env(), stdout=log, stderr=log,
                                                start_new_session=True)
        self.wait_port(self.console_port, 'the console')
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.https_get('/console/sante')[0] == 200:
                return
            time.sleep(0.3)
        raise RuntimeError('the console\'s worker did not start: see %s/console-worker.log' % self.dir)

    def wait_port(self, port, what):
        import socket
        deadline = time.time() + 60
        while time.time() < deadline:
            s = socket.socket()
            try:
                s.connect(('127.0.0.1', port))
                return
            except OSError:
                time.sleep(0.2)
            finally:
                s.close()
        raise RuntimeError('%s did not listen on port %d' % (what, port))

    def tls_context(self):
        import ssl
        return ssl.create_default_context(cafile=os.path.join(self.tls_dir, 'server.crt'))

    def https_get(self, path):
        try:
            with urllib.request.urlopen('https://127.0.0.1:%d%s' % (self.https_port, path), context=self.tls_context(), timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        super().stop()

    def info(self):
        return {'https': 'https://127.0.0.1:%d' % self.https_port, 'http': 'http://127.0.0.1:%d' % self.http_port,
                'trytond': 'http://127.0.0.1:%d' % self.web_port, 'tls_cert': os.path.join(self.tls_dir, 'server.crt'),
                'tls_json': os.path.join(self.run_dir, 'tls.json'), 'ami_login': AMI_LOGIN, 'ami_password': AMI_PASSWORD,
                'dir': self.dir, 'pg_socket': self.sock, 'pg_port': self.pg_port, 'env': {k: v for k, v in self.env().items() if k.startswith('PGI_')},
                'python': PYTHON, 'sbin': SBIN}


def serve():
    """Starts the lab, prints its addresses as one JSON line, runs until stdin closes, stops it.
    Commands on stdin (one JSON line each) are answered on stdout: {"console": [ARGS]} runs
    pgi-console, {"psql": SQL, "db": NAME} runs SQL as the superuser, {"proteus": …} a Tryton client."""
    lab = ConsoleLab()
    try:
        lab.start()
        print(json.dumps(lab.info()), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            try:
                if 'console' in req:
                    code, out, err = lab.console(*req['console'])
                    resp = {'status': code, 'out': out, 'err': err[-2000:]}
                elif 'psql' in req:
                    resp = {'rows': lab.psql(req['psql'], db=req.get('db', 'postgres'))}
                elif 'proteus' in req:
                    resp = {'out': lab.proteus(req['db'], req['login'], req['password'], req['proteus'])}
                else:
                    resp = {'error': 'unknown request'}
            except Exception as e:
                resp = {'error': '%s: %s' % (type(e).__name__, e)}
            print(json.dumps(resp), flush=True)
    finally:
        lab.stop()


if __name__ == '__main__':
    if sys.argv[1:] == ['serve']:
        serve()
    elif sys.argv[1:] == ['check']:
        print(missing_prerequisites() or '')
    else:
        sys.exit('usage: consolelab.py serve|check')
