#!/usr/bin/python3
"""bench/backup: bytes of the off-site push (pgi-offsite, restic) on the second night after a day of
class activity, as a fraction of the first night's full push (target <= 5 %), natively on this
machine: a throwaway PostgreSQL cluster and a real trytond (test/unit/image-tools/pgitest.py), a
model database and a class of --students copies (pgi-db class), pgi-backup's real -Z0 dumps, the
real restic pushing to a real `rclone serve restic --append-only` on 127.0.0.1.

Night 1: pgi-backup, pgi-offsite (the first, full push). Day: a few hundred new records through
proteus (a real Tryton client): --parties parties in the model and in two students' databases,
and one posted customer invoice. Night 2: pgi-backup, pgi-offsite.
Bytes are measured twice: what reached the repository (its folder's growth: compressed, encrypted,
with restic's metadata — what crossed the link) and restic's data_added (new data after
deduplication, before compression).

Needs root, restic, rclone and the Debian packages of scripts/install-deps.sh --test.
Usage: /usr/bin/python3 bench/backup.py [--students 10] [--parties 100] [--explain]
--explain: where the second night's bytes went, on stderr (each blob restic stored, its size and
the files or folder it belongs to), read back from the repository with restic itself.
Last line: one JSON object {"bench":"backup",...}.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'unit', 'image-tools'))
import pgitest  # noqa: E402

PARTIES = r'''
Party = Model.get('party.party')
Party.save([Party(name='%s %d' % (d['prefix'], i)) for i in range(d['n'])])
print(json.dumps(len(Party.find([]))))
'''


def tree_bytes(path):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(path) for n in ns)


def explain(repo, password, before):
    """Prints to stderr the blobs the last push stored (index files not in before), largest
    first, each with the path of the file or folder it holds."""
    env = dict(os.environ, RESTIC_PASSWORD=password)

    def restic(*args):
        return subprocess.run(['restic', '-r', repo, '--no-lock', *args], env=env, capture_output=True, check=True).stdout
    snap = json.loads(restic('snapshots', '--json'))[-1]
    where = {}

    def walk(tree, path):
        where[tree] = path + '/'
        for node in json.loads(restic('cat', 'blob', tree))['nodes']:
            p = path + '/' + node['name']
            if node['type'] == 'dir':
                walk(node['subtree'], p)
            for c in node.get('content') or []:
                where.setdefault(c, p)
    walk(snap['tree'], '')
    blobs = []
    for name in sorted(set(os.listdir(os.path.join(repo, 'index'))) - before):
        for pack in json.loads(restic('cat', 'index', name))['packs']:
            blobs += [(b['length'], b['type'], where.get(b['id'], '?')) for b in pack['blobs']]
    for t in ('data', 'tree'):
        sys.stderr.write('%s blobs: %d, %d bytes stored\n' % (t, sum(1 for b in blobs if b[1] == t), sum(b[0] for b in blobs if b[1] == t)))
    for length, t, path in sorted(blobs, reverse=True):
        sys.stderr.write('%7d %s %s\n' % (length, t, path))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--students', type=int, default=10)
    p.add_argument('--parties', type=int, default=100)
    p.add_argument('--explain', action='store_true')
    a = p.parse_args()
    for tool in ('/usr/bin/restic', '/usr/bin/rclone'):
        if not os.path.exists(tool):
            sys.exit('bench/backup: needs %s' % tool)
    why = pgitest.missing_prerequisites()
    if why:
        sys.exit('bench/backup: %s' % why)
    load0 = os.getloadavg()
    lab = pgitest.start_lab()
    rclone = None
    try:
        repo = os.path.join(lab.dir, 'region-repo')
        os.makedirs(repo)
        port = pgitest.free_port()
        rclone = subprocess.Popen(['rclone', 'serve', 'restic', '--append-only', '--addr', '127.0.0.1:%d' % port, repo],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

        def ok(*args):
            rc, out, err = lab.db(*args)
            if rc != 0:
                raise RuntimeError('pgi-db %s: %s' % (' '.join(args), err[-800:]))
            return out
        t0 = time.monotonic()
        ok('create', 'pgi', '--company', 'Lycée Bench', '--fiscal-year', '2027')
        csv = os.path.join(lab.dir, 'classe.csv')
        with open(csv, 'w') as f:
            f.write(''.join('Nom%02d;Prenom%02d\n' % (i, i) for i in range(a.students)))
        cls = ok('class', '--model', 'pgi', '--students', csv)
        students = [d['name'] for d in cls['databases']]
        setup_s = time.monotonic() - t0
        os.makedirs(os.path.join(lab.data, '.pgi'), exist_ok=True)
        conf = os.path.join(lab.data, '.pgi', 'offsite.json')
        with open(conf, 'w') as f:
            json.dump({'repository': 'rest:http://127.0.0.1:%d/' % port, 'password': 'bench-key-not-secret', 'host': '0130040Y'}, f)
        os.chmod(conf, 0o600)

        def night():
            rc, out, err = lab.tool('pgi-backup')
            if rc != 0:
                raise RuntimeError('pgi-backup: %s' % err[-800:])
            set_dir = os.path.dirname(str(out).strip())
            before = tree_bytes(repo)
            t = time.monotonic()
            rc, out, err = lab.tool('pgi-offsite')
            if rc != 0 or out.get('state') != 'ok':
                raise RuntimeError('pgi-offsite: %s %s' % (out, err[-800:]))
            return {'set_bytes': tree_bytes(set_dir), 'stored_bytes': tree_bytes(repo) - before, 'data_added': out['bytes_sent'],
                    'push_s': round(time.monotonic() - t, 1)}
        first = night()
        # a day of class activity
        t0 = time.monotonic()
        targets = ['pgi'] + students[:2]
        records = 0
        for db in targets:
            lab.proteus(db, 'admin', pgitest.ADMIN_PASSWORD, 'd = %r\n' % {'prefix': 'Client du jour %s' % db, 'n': a.parties} + PARTIES)
            records += a.parties
        lab.proteus('pgi', 'admin', pgitest.ADMIN_PASSWORD, pgitest.post_invoice_script('2027-03-15', 'Client facture du jour'))
        day_s = time.monotonic() - t0
        time.sleep(1.1)
        indexes = set(os.listdir(os.path.join(repo, 'index')))
        second = night()
        if a.explain:
            explain(repo, 'bench-key-not-secret', indexes)
        ratio = second['stored_bytes'] / first['stored_bytes'] if first['stored_bytes'] else None
        result = {'bench': 'backup', 'databases': 1 + len(students), 'students': len(students), 'new_records': records + 1,
                  'first': first, 'second': second,
                  'second_over_first_stored': round(ratio, 4) if ratio is not None else None,
                  'second_over_first_added': round(second['data_added'] / first['data_added'], 4) if first['data_added'] else None,
                  'target': 0.05, 'met': ratio is not None and ratio <= 0.05,
                  'setup_s': round(setup_s, 1), 'day_s': round(day_s, 1),
                  'restic': subprocess.run(['restic', 'version'], capture_output=True, text=True).stdout.split()[1],
                  'load_before': [round(x, 2) for x in load0], 'load_after': [round(x, 2) for x in os.getloadavg()], 'cpus': os.cpu_count()}
        print(json.dumps(result))
    finally:
        if rclone and rclone.poll() is None:
            os.killpg(rclone.pid, signal.SIGTERM)
        lab.stop()


if __name__ == '__main__':
    main()
