"""pgi-console: the teachers' console's command line (the host's `pgi db teacher …` and
`pgi db audit` call it over the guest agent, as root; it then acts as the console's own user).
Every command prints one JSON value on stdout; on failure {"error": {"code", "message"}} and a
line on stderr, with the exit status: 1 failure, 2 usage, 3 invalid input, 4 not found, 5 exists.

  pgi-console teacher add --name "Prénom Nom" --email ADDRESS    (prints the one-time code: hand it over)
  pgi-console teacher list
  pgi-console teacher disable|enable ADDRESS
  pgi-console teacher reset ADDRESS                                (new one-time code; password forgotten)
  pgi-console audit [--since 2026-09-01T00:00:00Z] [--limit 200] [--actor ADDRESS]
  pgi-console owners                                               (which teacher owns which database)
Services (systemd): serve (the web application), worker (the job runner), job-run ID, setup."""
import argparse
import json
import os
import sys

from . import config


class Usage(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Usage('%s: %s' % (self.prog, message))


def fail(code, message, status):
    print(json.dumps({'error': {'code': code, 'message': message}}, ensure_ascii=False))
    sys.stderr.write('pgi-console: %s\n' % message)
    sys.exit(status)


def drop_to_console_user():
    """Run as root (the guest agent), the store is opened as the console's user: files SQLite
    creates beside it (WAL, shared memory) must stay the web application's."""
    if os.geteuid() != 0:
        return
    import pwd
    try:
        pw = pwd.getpwnam(config.OS_USER)
    except KeyError:
        return  # not in the image (the test suite runs as root)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def serve():
    from waitress import serve as waitress_serve
    from .web import create_app
    host, port = config.LISTEN.rsplit(':', 1)
    os.umask(0o077)
    for d in (config.UPLOADS, config.DOWNLOADS, config.TMP):
        os.makedirs(d, mode=0o700, exist_ok=True)
    # uploads spool on the data disk, not in the OS disk's /tmp
    import tempfile
    tempfile.tempdir = config.TMP
    app = create_app()
    # Every page's template compiled once now, in the background, rather than by the first request
    # of each page: under software emulation a first render took 0.5-0.9 s of a request's server
    # time (the AMI's login page, the audit log, the class sheet), later renders 10-150 ms.
    # The libraries pages load on first use likewise: argon2 (cffi: the first teacher login or
    # activation), cryptography's Fernet (the first class sheet), psycopg2 (the AMI's login).
    import threading

    def warm_templates():
        from . import security
        try:
            import psycopg2  # noqa: F401
            security.hasher()
            security.warm()
        except Exception as e:  # the page that needs it fails with its own error, later
            print('pgi-console: warm-up: %s' % e, file=sys.stderr)
        for name in app.jinja_env.list_templates(extensions=['html']):
            try:
                app.jinja_env.get_template(name)
            except Exception as e:  # a broken template fails its own page, with its error, later
                print('pgi-console: template %s: %s' % (name, e), file=sys.stderr)
    threading.Thread(target=warm_templates, name='warm-templates', daemon=True).start()
    waitress_serve(app, host=host, port=int(port), threads=4, ident='pgi-console', trusted_proxy='127.0.0.1',
                   trusted_proxy_headers={'x-forwarded-for', 'x-forwarded-proto'}, clear_untrusted_proxy_headers=True,
                   max_request_body_size=config.UPLOAD_MAX_BYTES + (2 << 20), channel_timeout=300, connection_limit=200)


def setup(wait_s):
    """As root, before the services start: the console's folder on the data disk (its owner fixed
    if the user's id changed with a new OS disk), and its PostgreSQL role: member of tryton, may
    create databases, nothing else (altered back if someone gave it more)."""
    import pwd
    import time
    import pgilib
    pw = pwd.getpwnam(config.OS_USER)
    os.makedirs(config.CONSOLE_DIR, mode=0o700, exist_ok=True)
    st = os.stat(config.CONSOLE_DIR)
    if st.st_uid != pw.pw_uid:
        for root, dirs, files in os.walk(config.CONSOLE_DIR):
            for n in [root] + [os.path.join(root, f) for f in dirs + files]:
                os.lchown(n, pw.pw_uid, pw.pw_gid)
    os.chmod(config.CONSOLE_DIR, 0o700)
    out = {'folder': config.CONSOLE_DIR, 'role': None}
    if wait_s is None:
        return out
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pgilib.psql('SELECT 1')
            break
        except Exception as e:
            if time.monotonic() > deadline:
                raise RuntimeError('PostgreSQL did not answer within %d s: %s' % (wait_s, e))
            time.sleep(2)
    role = pgilib.quote_ident(config.DB_ROLE)
    exists = pgilib.psql('SELECT 1 FROM pg_roles WHERE rolname = %s', params=(config.DB_ROLE,))
    pgilib.psql_script('%s %s LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT;\nGRANT tryton TO %s;\n'
                       % ('ALTER ROLE' if exists else 'CREATE ROLE', role, role))
    out['role'] = {'name': config.DB_ROLE, 'created': not exists}
    return out


def main(argv=None):
    p = Parser(prog='pgi-console', description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True, parser_class=Parser)
    sub.add_parser('serve')
    sub.add_parser('worker')
    c = sub.add_parser('job-run')
    c.add_argument('id', type=int)
    c = sub.add_parser('setup')
    c.add_argument('--wait-postgresql', type=int, default=None, metavar='SECONDS')
    t = sub.add_parser('teacher')
    tsub = t.add_subparsers(dest='tcmd', required=True, parser_class=Parser)
    c = tsub.add_parser('add')
    c.add_argument('--name', required=True)
    c.add_argument('--email', required=True)
    tsub.add_parser('list')
    for name in ('disable', 'enable', 'reset'):
        tsub.add_parser(name).add_argument('email')
    c = sub.add_parser('audit')
    c.add_argument('--since')
    c.add_argument('--limit', type=int, default=200)
    c.add_argument('--actor')
    sub.add_parser('owners')
    try:
        a = p.parse_args(argv)
    except Usage as e:
        fail('usage', str(e), 2)
    if a.cmd == 'serve':
        return serve()
    if a.cmd == 'worker':
        from . import worker
        sys.exit(worker.main())
    if a.cmd == 'job-run':
        from . import jobs
        sys.exit(jobs.run(a.id))
    try:
        if a.cmd == 'setup':
            out = setup(a.wait_postgresql)
        else:
            drop_to_console_user()
            from . import accounts
            from .store import audit_rows, connect
            db = connect()
            by = 'cli:%s' % os.environ.get('PGI_CONSOLE_CLI_ACTOR', 'root')
            if a.cmd == 'teacher':
                if a.tcmd == 'add':
                    acc, code = accounts.add_teacher(db, a.name, a.email, by, role='cli')
                    out = {'teacher': acc, 'setup_code': code, 'setup_page': '/console/activer'}
                elif a.tcmd == 'list':
                    out = accounts.list_teachers(db)
                elif a.tcmd == 'disable':
                    out = {'teacher': accounts.disable(db, a.email, by, role='cli')}
                elif a.tcmd == 'enable':
                    out = {'teacher': accounts.enable(db, a.email, by, role='cli')}
                else:
                    acc, code = accounts.reset(db, a.email, by, role='cli')
                    out = {'teacher': acc, 'setup_code': code, 'setup_page': '/console/activer'}
            elif a.cmd == 'audit':
                if a.limit < 1 or a.limit > 100000:
                    fail('usage', '--limit: 1 to 100000', 2)
                out = audit_rows(db, since=a.since, limit=a.limit, actor=a.actor)
            else:
                out = [{'database': r['name'], 'owner': r['email'], 'kind': r['kind'], 'class': r['label'], 'status': r['status'],
                        'since': r['since'], 'until': r['until']}
                       for r in db.execute('SELECT d.*, a.email, c.label FROM databases d JOIN accounts a ON a.id = d.owner_id '
                                           'LEFT JOIN classes c ON c.id = d.class_id ORDER BY d.name, d.id')]
    except SystemExit:
        raise
    except Exception as e:
        from .accounts import AccountError
        if isinstance(e, AccountError):
            fail(e.code, str(e), e.status)
        fail('failed', '%s: %s' % (type(e).__name__, str(e)[-500:]), 1)
    print(json.dumps(out, ensure_ascii=False))
    return 0
