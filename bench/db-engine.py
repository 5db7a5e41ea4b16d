#!/usr/bin/python3
"""bench/db-engine: wall time of the image's database engine (pgi-db) natively, on this machine,
against a throwaway PostgreSQL cluster (fsync on, as in the VM) and a real trytond, with the
template database built by the image's make-template (test/unit/image-tools/pgitest.py):

  create (first: restores the template into the cluster once; then: one copy), create --from with
  a new fiscal year, copy of a database trytond has open, a per-student class of N from a model,
  a shared class of N, backup, restore --as, drop (with its final dump), login-check.

Needs root and the Debian packages of scripts/install-deps.sh --test.
Usage: /usr/bin/python3 bench/db-engine.py [--students 30]
Last line: one JSON object.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'unit', 'image-tools'))
import pgitest  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--students', type=int, default=30)
    a = p.parse_args()
    why = pgitest.missing_prerequisites()
    if why:
        sys.exit('bench/db-engine: %s' % why)
    lab = pgitest.Lab(fsync=True)
    res = {'bench': 'db-engine', 'students': a.students, 'cpus': os.cpu_count()}
    try:
        t = time.monotonic()
        lab.start()
        res['lab_start_s'] = round(time.monotonic() - t, 2)
        res['template_cached'] = lab.template_cached

        def timed(key, *args, **kw):
            t0 = time.monotonic()
            rc, out, err = lab.db(*args, **kw)
            if rc != 0:
                raise SystemExit('pgi-db %s failed: %s %s' % (' '.join(args), out, err))
            res[key] = round(time.monotonic() - t0, 2)
            print('%-28s %6.2f s' % (key, res[key]), file=sys.stderr)
            return out

        timed('create_first_s', 'create', 'pgi', '--company', 'Lycée Bench', '--fiscal-year', '2027')
        timed('create_s', 'create', 'pgi_2', '--company', 'Lycée Bench 2')
        timed('create_from_new_year_s', 'create', 'pgi_3', '--from', 'pgi', '--fiscal-year', '2028')
        lab.rpc('pgi', 'common.db.login', ['admin', {'password': pgitest.ADMIN_PASSWORD}, 'fr'])
        out = timed('copy_in_use_s', 'copy', 'pgi', 'pgi_copie')
        res['copy_method'] = out['method']
        csv = ''.join('Eleve%02d;Prenom%02d;BTS1\n' % (i, i) for i in range(a.students)).encode()
        out = timed('class_per_student_s', 'class', '--model', 'pgi', '--students', '-', '--prefix', 'bts1', stdin=csv)
        res['class_databases'] = len(out['databases'])
        timed('class_shared_s', 'class', '--model', 'pgi', '--students', '-', '--prefix', 'tp', '--mode', 'shared', stdin=csv)
        timed('backup_s', 'backup', 'bts1_prenom00_eleve00')
        timed('restore_as_s', 'restore', 'bts1_prenom00_eleve00', '--as', 'restauree')
        timed('drop_s', 'drop', 'restauree')
        timed('list_s', 'list')
        timed('login_check_first_s', 'login-check', 'pgi')
        timed('login_check_s', 'login-check', 'pgi')
        res['db_size_bytes'] = int(lab.psql("SELECT pg_database_size('pgi')")[0][0])
        res['load_avg_1m'] = round(os.getloadavg()[0], 1)
    finally:
        lab.stop()
    print(json.dumps(res))


if __name__ == '__main__':
    main()
