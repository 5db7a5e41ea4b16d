"""pgi-offsite (the nightly backup's off-site copy with restic), run natively: real dumps from
pgi-backup against a throwaway PostgreSQL cluster (pgitest.Lab), pushed with the real restic to a
real `rclone serve restic --append-only` on 127.0.0.1 (the Région's REST server, append-only
from the VM). The Région's side is played by restic opening the repository folder directly.

Checks: not configured is a no-op; a push (password only in restic's environment, never on a
command line, in the status or the output); the Région restores it and the dumps, pushed in pieces
(pgisplit) and joined back, match the manifest's sha256; a second night without change sends next
to nothing and rewrites no piece; the VM cannot delete a snapshot;
wrong key, unreachable and full repositories are told apart and leave the local backups alone;
the transfer window defers; a push cut mid-way resumes without sending again the packs that
arrived (bytes measured). --restore (what `pgi backup restore` runs on the target VM): bad
requests, an unknown snapshot and a wrong key change nothing; existing databases are refused; after
the databases are lost, they come back from the snapshot with the manifest's row counts and a
working Tryton login; with replace, each one is dumped first.

Run: /usr/bin/python3 -m unittest -v test_offsite (as root, in this folder), or through vitest
(offsite.test.ts). The tests share one lab and run in order (test_NN_).
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgitest  # noqa: E402

lab = None
rclone = None
REPO_DIR = None
PORT = None
PASSWORD = 'pgi-offsite-test-Région-key-7f3a9'
UAI = '0130040Y'


def missing():
    for tool in ('/usr/bin/restic', '/usr/bin/rclone'):
        if not os.path.exists(tool):
            return 'needs %s (scripts/install-deps.sh --test)' % tool
    return pgitest.missing_prerequisites()


def start_rclone(folder, port):
    p = subprocess.Popen(['rclone', 'serve', 'restic', '--append-only', '--addr', '127.0.0.1:%d' % port, folder],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(lab.dir, 'rclone-%d.log' % port), 'w'), start_new_session=True)
    deadline = time.time() + 20
    import socket
    while time.time() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError('rclone serve restic did not listen on %d' % port)


def setUpModule():
    global lab, rclone, REPO_DIR, PORT
    why = missing()
    if why:
        raise unittest.SkipTest(why)
    lab = pgitest.start_lab()
    REPO_DIR = os.path.join(lab.dir, 'region-repo')
    os.makedirs(REPO_DIR)
    PORT = pgitest.free_port()
    rclone = start_rclone(REPO_DIR, PORT)
    # a wrapper that records each restic call's arguments and environment names (never values)
    wrapper = os.path.join(lab.dir, 'restic-wrapper')
    with open(wrapper, 'w') as f:
        f.write('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s/restic-argv.log\nenv | cut -d= -f1 | sort | tr "\\n" " " >> %s/restic-argv.log\n'
                'echo >> %s/restic-argv.log\nexec /usr/bin/restic "$@"\n' % (lab.dir, lab.dir, lab.dir))
    os.chmod(wrapper, 0o755)


def tearDownModule():
    for p in [rclone] + list(EXTRA):
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
    if lab:
        lab.stop()


EXTRA = []
FIRST = {}


def offsite(*args, env=None, stdin=None):
    e = {'PGI_RESTIC': os.path.join(lab.dir, 'restic-wrapper')}
    e.update(env or {})
    return lab.tool('pgi-offsite', *args, env=e, stdin=stdin)


def state_dir():
    return os.path.join(lab.data, '.pgi')


def write_config(**over):
    c = {'repository': 'rest:http://127.0.0.1:%d/' % PORT, 'password': PASSWORD, 'host': UAI}
    c.update(over)
    c = {k: v for k, v in c.items() if v is not None}
    os.makedirs(state_dir(), exist_ok=True)
    path = os.path.join(state_dir(), 'offsite.json')
    with open(path, 'w') as f:
        json.dump(c, f)
    os.chmod(path, 0o600)
    return path


def status():
    with open(os.path.join(state_dir(), 'offsite-status.json')) as f:
        return json.load(f)


def region(*args, repo=None):
    """The Région's side: restic on the repository's folder itself (not through the VM's server)."""
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=os.path.join(lab.dir, 'region-cache'))
    r = subprocess.run(['restic', '-r', repo or REPO_DIR] + list(args), capture_output=True, text=True, env=env, timeout=600)
    return r


def snapshots():
    r = region('snapshots', '--json')
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def backup_sets():
    b = os.path.join(lab.data, 'backups')
    return sorted(d for d in os.listdir(b) if not d.startswith('.') and d != 'databases')


def repo_bytes():
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(REPO_DIR) for n in ns)


def read_dump(base, name):
    """The bytes of dump `name` as restored from a snapshot: pushed in pieces (pgisplit), joined
    back as the Région's runbook says (python3 pgisplit.py join)."""
    path = os.path.join(base, name)
    if not os.path.exists(path):
        r = subprocess.run([pgitest.PYTHON, os.path.join(pgitest.LIB, 'pgisplit.py'), 'join', path + '.split', path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    with open(path, 'rb') as f:
        return f.read()


def stage_files():
    """{path under the stage: (inode, mtime_ns, ctime_ns)} of the staged pieces and links."""
    root = os.path.join(lab.data, 'backups', '.offsite')
    out = {}
    for d, _, ns in os.walk(root):
        for n in ns:
            st = os.stat(os.path.join(d, n))
            out[os.path.relpath(os.path.join(d, n), root)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


def nightly():
    rc, out, err = lab.tool('pgi-backup')
    assert rc == 0, err
    return os.path.basename(os.path.dirname(str(out).strip()))


class Offsite(unittest.TestCase):
    maxDiff = None

    def test_01_not_configured_is_a_no_op(self):
        rc, out, err = offsite()
        self.assertEqual((rc, out['state']), (0, 'not_configured'), err)
        self.assertEqual(status()['configured'], False)

    def test_01b_configure_reads_the_settings_on_stdin(self):
        # what pgi sends over the guest agent (src/backup/offsite.ts guestOffsiteConfig): checked, 0600
        path = os.path.join(state_dir(), 'offsite.json')
        settings = {'repository': 'rest:http://127.0.0.1:%d/' % PORT, 'password': PASSWORD, 'host': UAI, 'limit_upload_kib': 2048,
                    'window': '01:00-06:00'}
        rc, out, err = offsite('--configure', stdin=json.dumps(settings).encode())
        self.assertEqual((rc, out), (0, {'configured': True, 'repository': settings['repository']}), err)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f), settings)
        self.assertNotIn(PASSWORD, err)
        # bad settings are refused and change nothing
        for bad, word in (({**settings, 'window': '25:00-06:00'}, 'window'), ({**settings, 'color': 'blue'}, 'color'),
                          ({k: v for k, v in settings.items() if k != 'password'}, 'password')):
            rc, out, err = offsite('--configure', stdin=json.dumps(bad).encode())
            self.assertEqual(rc, 3, err)
            self.assertIn(word, out['error']['message'])
        rc, out, err = offsite('--configure', stdin=b'not json')
        self.assertEqual(rc, 3)
        with open(path) as f:
            self.assertEqual(json.load(f), settings)
        self.assertFalse(os.path.exists(path + '.new'))

    def test_02_first_push(self):
        rc, out, err = lab.db('create', 'pgi', '--company', 'Lycée Hors Site', '--fiscal-year', '2027')
        self.assertEqual(rc, 0, err)
        stamp = nightly()
        write_config()
        before = repo_bytes()
        rc, out, err = offsite()
        self.assertEqual(rc, 0, err)
        self.assertEqual((out['state'], out['set']), ('ok', stamp))
        self.assertGreater(out['bytes_sent'], 100000)
        FIRST['stored'] = repo_bytes() - before
        st = status()
        self.assertEqual((st['state'], st['last_set'], st['error_class'], st['snapshot']), ('ok', stamp, None, out['snapshot']))
        snaps = snapshots()
        self.assertEqual(len(snaps), 1)
        self.assertEqual(snaps[0]['hostname'], UAI)
        self.assertIn('set=' + stamp, snaps[0]['tags'])
        # the snapshot's tree starts at the stage (no listing of the folders above it each night)
        self.assertIn('root=stage', snaps[0]['tags'])
        # the password: in restic's environment only — never in an argument, the output or the status
        with open(os.path.join(lab.dir, 'restic-argv.log')) as f:
            calls = f.read()
        self.assertIn('RESTIC_PASSWORD', calls)
        self.assertNotIn(PASSWORD, calls)
        self.assertNotIn(PASSWORD, json.dumps(out) + err + json.dumps(st))
        # the Région restores it and the dumps are those of the manifest
        target = os.path.join(lab.dir, 'restored')
        r = region('restore', 'latest', '--target', target)
        self.assertEqual(r.returncode, 0, r.stderr)
        base = os.path.join(target, 'nightly')
        with open(os.path.join(target, 'SET')) as f:
            self.assertEqual(f.read().strip(), stamp)
        with open(os.path.join(base, 'manifest.json')) as f:
            manifest = json.load(f)
        for e in manifest['databases']:
            # each dump pushed in pieces along its structure, joined back byte for byte
            self.assertTrue(os.path.isfile(os.path.join(base, e['file'] + '.split', 'index.json')), e['file'])
            self.assertEqual(hashlib.sha256(read_dump(base, e['file'])).hexdigest(), e['sha256'], e['name'])
        shutil.rmtree(target)

    def test_03_a_set_is_pushed_once_and_the_next_night_deduplicates(self):
        first = status()['bytes_sent']
        rc, out, err = offsite()
        self.assertEqual((rc, out['state']), (0, 'ok'), err)
        self.assertIn('already pushed', out['detail'])
        self.assertEqual(len(snapshots()), 1)
        time.sleep(1.1)  # a new stamp (seconds)
        stamp = nightly()
        before = repo_bytes()
        staged = stage_files()
        rc, out, err = offsite()
        self.assertEqual((rc, out['set']), (0, stamp), err)
        stored = repo_bytes() - before
        # the pieces of unchanged dumps keep their files (same inode and times: restic neither reads
        # them nor records new metadata); the set's other files are links to the new set's
        after = stage_files()
        pieces = [k for k in staged if '.split' + os.sep in k]
        self.assertGreater(len(pieces), 10)
        self.assertEqual({k: after.get(k) for k in pieces}, {k: staged[k] for k in pieces})
        self.assertNotEqual(after[os.path.join('nightly', 'manifest.json')], staged[os.path.join('nightly', 'manifest.json')])
        sys.stderr.write('first push: %d bytes new, %d stored; second night: %d new, %d stored\n' % (first, FIRST['stored'], out['bytes_sent'], stored))
        # unchanged databases dump to the same bytes (pgi-backup zeroes the header's time): only the
        # manifest and restic's metadata are new
        self.assertLess(out['bytes_sent'], first * 0.05, 'the second night of unchanged databases sends < 5 %% of the first (%d of %d)'
                        % (out['bytes_sent'], first))
        self.assertLess(stored, FIRST['stored'] * 0.05)
        self.assertEqual(len(snapshots()), 2)

    def test_04_the_vm_cannot_delete_history(self):
        before = snapshots()
        sid = before[0]['id']
        env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY='rest:http://127.0.0.1:%d/' % PORT,
                   RESTIC_CACHE_DIR=os.path.join(lab.dir, 'vm-cache'))
        r = subprocess.run(['restic', 'forget', sid], capture_output=True, text=True, env=env, timeout=300)
        self.assertNotEqual(r.returncode, 0, 'the append-only repository refused the deletion')
        r = subprocess.run(['restic', 'forget', '--keep-last', '1', '--prune'], capture_output=True, text=True, env=env, timeout=300)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual([s['id'] for s in snapshots()], [s['id'] for s in before])
        self.assertEqual(region('check').returncode, 0)

    def test_05_wrong_key(self):
        sets = backup_sets()
        write_config(password='not-the-region-key')
        rc, out, err = offsite('--force')
        self.assertEqual(rc, 1, err)
        self.assertEqual((out['state'], out['error_class']), ('failed', 'wrong_key'))
        self.assertNotIn('not-the-region-key', json.dumps(status()) + err)
        self.assertEqual(backup_sets(), sets, 'the local backups are untouched')
        self.assertEqual(status()['last_set'], sets[-1], 'the last success is still told')

    def test_06_unreachable(self):
        write_config(repository='rest:http://127.0.0.1:%d/' % pgitest.free_port())
        t0 = time.monotonic()
        rc, out, err = offsite('--force')
        self.assertEqual((rc, out['error_class']), (1, 'unreachable'), err)
        self.assertLess(time.monotonic() - t0, 60)

    def test_07_bad_config_is_named(self):
        path = write_config(window='25:00-06:00')
        rc, out, err = offsite('--force')
        self.assertEqual((rc, out['error_class']), (1, 'config'))
        self.assertIn('window', out['error'])
        write_config()
        os.chmod(path, 0o644)
        rc, out, err = offsite('--force')
        self.assertEqual((rc, out['error_class']), (1, 'config'))
        self.assertIn('chmod 600', out['error'])

    def test_08_outside_the_window_nothing_is_sent(self):
        now = time.localtime()
        start = (now.tm_hour + 2) % 24
        write_config(window='%02d:00-%02d:00' % (start, (start + 1) % 24))
        n = len(snapshots())
        time.sleep(1.1)
        nightly()
        rc, out, err = offsite()
        self.assertEqual((rc, out['state']), (0, 'deferred'), err)
        self.assertEqual(len(snapshots()), n)
        rc, out, err = offsite('--now')
        self.assertEqual((rc, out['state']), (0, 'ok'), err)
        self.assertEqual(len(snapshots()), n + 1)

    def test_09_a_cut_push_resumes_without_sending_again_what_arrived(self):
        # ~24 MB of incompressible rows: a push of a few seconds at the cap
        lab.psql('CREATE DATABASE bulk')
        lab.psql("CREATE TABLE noise AS SELECT i, encode(decode(md5(random()::text) || md5(random()::text), 'hex') || "
                 "decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64') AS v FROM generate_series(1, 300000) i", db='bulk')
        time.sleep(1.1)
        stamp = nightly()
        size = os.path.getsize(os.path.join(lab.data, 'backups', stamp, 'bulk.dump'))
        write_config(limit_upload_kib=2048)
        before = repo_bytes()
        p = subprocess.Popen([pgitest.PYTHON, os.path.join(pgitest.SBIN, 'pgi-offsite')], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=lab.env(PGI_RESTIC='/usr/bin/restic'))
        # cut once a few packs arrived (the pack size is 4 MiB or more)
        deadline = time.time() + 120
        t0 = time.time()
        while repo_bytes() - before < 9 << 20 and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        sys.stderr.write('cut after %.1f s, %d bytes arrived\n' % (time.time() - t0, repo_bytes() - before))
        self.assertIsNone(p.poll(), 'the push was still running when cut')
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(status()['state'], 'interrupted')
        arrived = repo_bytes() - before
        write_config()
        rc, out, err = offsite()
        self.assertEqual((rc, out['state'], out['set']), (0, 'ok', stamp), err)
        resent = out['bytes_sent']
        sys.stderr.write('cut push: dump %d bytes, %d arrived before the cut, %d sent by the resumed push\n' % (size, arrived, resent))
        self.assertLess(resent, size - arrived * 0.8, 'the resumed push did not send again what had arrived')
        self.assertEqual(region('check').returncode, 0)
        target = os.path.join(lab.dir, 'restored-bulk')
        r = region('restore', 'latest', '--target', target, '--include', '/nightly')
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(lab.data, 'backups', stamp, 'manifest.json')) as f:
            entry = next(e for e in json.load(f)['databases'] if e['name'] == 'bulk')
        self.assertEqual(hashlib.sha256(read_dump(os.path.join(target, 'nightly'), 'bulk.dump')).hexdigest(), entry['sha256'])
        shutil.rmtree(target)

    def test_09b_pgi_health_reports_it_without_judging_it(self):
        # the last push failed (test_09 ended well: make it fail), pgi-health says so under offsite,
        # and never among its problems: an unreachable Région must not fail a rollout's gate
        write_config(repository='rest:http://127.0.0.1:%d/' % pgitest.free_port())
        rc, out, err = offsite('--force')
        self.assertEqual((rc, out['error_class']), (1, 'unreachable'))
        rc, health, err = lab.tool('pgi-health')
        self.assertIsNotNone(health, err)
        off = health['offsite']
        self.assertEqual((off['configured'], off['state'], off['error_class']), (True, 'failed', 'unreachable'))
        self.assertIsInstance(off['age_s'], int)
        self.assertFalse([p for p in health['problems'] if 'offsite' in p or 'restic' in p], health['problems'])
        self.assertNotIn(PASSWORD, json.dumps(health))
        write_config()

    def test_10_full_repository(self):
        full = os.path.join(lab.dir, 'full')
        os.makedirs(full)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', full], check=True)
        try:
            port = pgitest.free_port()
            p = start_rclone(full, port)
            EXTRA.append(p)
            write_config(repository='rest:http://127.0.0.1:%d/' % port)
            sets = backup_sets()
            t0 = time.monotonic()
            rc, out, err = offsite('--force', env={'PGI_OFFSITE_STALL_S': '30'})
            self.assertEqual((rc, out['error_class']), (1, 'repository_full'), err)
            sys.stderr.write('full repository told in %.0f s: %s\n' % (time.monotonic() - t0, out['error'][:300]))
            self.assertEqual(backup_sets(), sets)
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
        finally:
            subprocess.run(['umount', '-l', full])

    def test_10b_a_push_cut_by_the_link_resumes_too(self):
        # the Région's server goes away mid-push (a cut link, not a stop): restic's uploads fail,
        # the push ends failed/unreachable; the next run indexes what arrived and sends the rest.
        # test_09's bulk database has served (test_10 needed a set larger than its 3 MB repository):
        # dropped, so the nights from here on stay small
        lab.psql('DROP DATABASE bulk WITH (FORCE)')
        lab.psql('CREATE DATABASE bulk2')
        lab.psql("CREATE TABLE noise AS SELECT i, encode(decode(md5(random()::text) || md5(random()::text), 'hex') || "
                 "decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64') AS v FROM generate_series(1, 300000) i", db='bulk2')
        time.sleep(1.1)
        stamp = nightly()
        size = os.path.getsize(os.path.join(lab.data, 'backups', stamp, 'bulk2.dump'))
        global rclone
        write_config(limit_upload_kib=2048)
        before = repo_bytes()
        p = subprocess.Popen([pgitest.PYTHON, os.path.join(pgitest.SBIN, 'pgi-offsite'), '--now'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=lab.env(PGI_RESTIC='/usr/bin/restic', PGI_OFFSITE_STALL_S='20'))
        deadline = time.time() + 120
        while repo_bytes() - before < 9 << 20 and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        self.assertIsNone(p.poll(), 'the push was still running when the link was cut')
        os.killpg(rclone.pid, signal.SIGKILL)
        rclone.wait(10)
        out, err = p.communicate(timeout=600)
        st = status()
        arrived = repo_bytes() - before
        self.assertEqual((st['state'], st['error_class']), ('failed', 'unreachable'), st)
        rclone = start_rclone(REPO_DIR, PORT)
        write_config()
        rc, out, err = offsite()
        self.assertEqual((rc, out['state'], out['set']), (0, 'ok', stamp), err)
        sys.stderr.write('push cut by the link: dump %d bytes, %d arrived before the cut, %d sent by the next run\n' % (size, arrived, out['bytes_sent']))
        # what arrived whole is not sent again; the packs in flight at the cut (one upload at a time,
        # 4 MiB packs, the server killed mid-write) are
        self.assertLess(out['bytes_sent'], size - arrived + (8 << 20), 'the next run sent again what had arrived')
        self.assertEqual(region('check').returncode, 0)

    def test_10c_a_night_without_the_bulk_databases(self):
        # the restores below work on the class databases alone: the bulk ones dropped, a new night
        # pushed, and that snapshot is the latest
        lab.psql('DROP DATABASE bulk2 WITH (FORCE)')
        time.sleep(1.1)
        stamp = nightly()
        rc, out, err = offsite()
        self.assertEqual((rc, out['state'], out['set']), (0, 'ok', stamp), err)
        with open(os.path.join(lab.data, 'backups', stamp, 'manifest.json')) as f:
            names = [e['name'] for e in json.load(f)['databases']]
        self.assertIn('pgi', names)
        self.assertFalse({'bulk', 'bulk2'} & set(names))

    # --restore: another server (here the same lab, its databases dropped) brings back the
    # databases of an off-site snapshot, checked against the manifest, with a working login

    def restore(self, snapshot='latest', replace=None, password=PASSWORD, **extra):
        req = {'repository': 'rest:http://127.0.0.1:%d/' % PORT, 'password': password, 'snapshot': snapshot}
        if replace is not None:
            req['replace'] = replace
        req.update(extra)
        return offsite('--restore', stdin=json.dumps(req).encode())

    def latest_manifest(self):
        snap = sorted(snapshots(), key=lambda s: s['time'])[-1]
        target = os.path.join(lab.dir, 'manifest-of-latest')
        r = region('restore', snap['id'], '--target', target, '--include', '/nightly/manifest.json')
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(target, 'nightly', 'manifest.json')) as f:
            m = json.load(f)
        shutil.rmtree(target)
        return snap, m

    def assertNoWorkLeft(self):
        self.assertEqual([d for d in os.listdir(os.path.join(lab.data, 'backups')) if d.startswith('.restore-')], [])

    def test_11_restore_bad_requests_change_nothing(self):
        dbs = lab.databases()
        for stdin, word in ((b'not json', 'not JSON'), (json.dumps({'repository': 'rest:http://127.0.0.1:1/'}).encode(), 'password'),
                            (json.dumps({'repository': 'ftp://x/', 'password': 'x'}).encode(), 'repository'),
                            (json.dumps({'repository': 'rest:http://127.0.0.1:1/', 'password': 'x', 'snapshot': 'last; rm -rf /'}).encode(), 'snapshot'),
                            (json.dumps({'repository': 'rest:http://127.0.0.1:1/', 'password': 'x', 'colour': 1}).encode(), 'colour')):
            rc, out, err = offsite('--restore', stdin=stdin)
            self.assertEqual((rc, out['error']['code']), (3, 'invalid'), (stdin, out, err))
            self.assertIn(word, out['error']['message'])
        self.assertEqual(lab.databases(), dbs)
        self.assertNoWorkLeft()

    def test_12_restore_unknown_snapshot_and_wrong_key(self):
        dbs = lab.databases()
        rc, out, err = self.restore('deadbeef')
        self.assertEqual((rc, out['error']['code']), (4, 'no_snapshot'), (out, err))
        rc, out, err = self.restore(password='not-the-key')
        self.assertEqual((rc, out['error']['code']), (1, 'offsite_wrong_key'), (out, err))
        self.assertNotIn('not-the-key', json.dumps(out) + err)
        self.assertEqual(lab.databases(), dbs)
        self.assertNoWorkLeft()

    def test_13_restore_refuses_to_overwrite(self):
        snap, m = self.latest_manifest()
        names = sorted(e['name'] for e in m['databases'])
        self.assertIn('pgi', names)
        before = {n: lab.psql('SELECT count(*) FROM res_user', db=n) for n in names if n == 'pgi'}
        rc, out, err = self.restore()
        self.assertEqual((rc, out['error']['code']), (5, 'exists'), (out, err))
        self.assertEqual(sorted(out['error']['databases']), sorted(n for n in names if n in lab.databases()))
        self.assertEqual({n: lab.psql('SELECT count(*) FROM res_user', db=n) for n in before}, before)
        self.assertFalse([d for d in lab.databases() if d.startswith('pgi_tmp_')])
        self.assertNoWorkLeft()

    def test_14_restore_after_the_server_was_lost(self):
        snap, m = self.latest_manifest()
        names = sorted(e['name'] for e in m['databases'])
        for n in names:
            if n in lab.databases():
                lab.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % n)
                lab.psql('DROP DATABASE "%s" WITH (FORCE)' % n)
        self.assertFalse(set(names) & set(lab.databases()))
        open(os.path.join(lab.dir, 'restic-argv.log'), 'w').close()
        t0 = time.monotonic()
        rc, out, err = self.restore(snap['short_id'])
        self.assertEqual(rc, 0, (out, err))
        sys.stderr.write('restore of %d database(s) (%d bytes of dumps) from snapshot %s: %.1f s\n'
                         % (len(names), sum(e['size'] for e in m['databases']), snap['short_id'], time.monotonic() - t0))
        self.assertEqual((out['snapshot'], out['host']), (snap['short_id'], UAI))
        self.assertEqual(sorted(d['name'] for d in out['databases']), names)
        self.assertTrue(set(names) <= set(lab.databases()))
        for e in m['databases']:
            d = next(x for x in out['databases'] if x['name'] == e['name'])
            self.assertTrue(d['row_counts_match'])
            self.assertEqual(d['row_counts'], e['row_counts'])
            self.assertFalse(d['replaced'])
            self.assertEqual(d['figures_checked'], bool(e.get('figures')))
        pgi = next(x for x in out['databases'] if x['name'] == 'pgi')
        self.assertEqual((pgi['tryton'], pgi['login']), (True, True), pgi)
        self.assertTrue(out['login_ok'])
        # the restored database answers a real client: the administrator logs in with this server's password
        res = lab.rpc('pgi', 'common.db.login', ['admin', {'password': pgitest.ADMIN_PASSWORD}, 'fr'])
        self.assertTrue(res.get('result'), res)
        with open(os.path.join(lab.dir, 'restic-argv.log')) as f:
            calls = f.read()
        self.assertIn('restore', calls)
        self.assertNotIn(PASSWORD, calls + json.dumps(out) + err)
        self.assertFalse([d for d in lab.databases() if d.startswith('pgi_tmp_')])
        self.assertNoWorkLeft()

    def test_15_restore_with_replace_keeps_what_it_replaces(self):
        snap, m = self.latest_manifest()
        rc, out, err = self.restore(replace=True)
        self.assertEqual(rc, 0, (out, err))
        self.assertTrue(all(d['replaced'] for d in out['databases']), out)
        self.assertEqual(len(out['kept']), len(m['databases']))
        rc, listed, err = lab.db('backups', 'pgi')
        self.assertIn('before-replace', [b['kind'] for b in listed])
        self.assertNoWorkLeft()


if __name__ == '__main__':
    unittest.main()
