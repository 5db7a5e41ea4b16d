"""pgisplit.py (the nightly dumps cut into pieces for the off-site copy, joined back at restore),
run natively on real archives: pgi-backup's own -Z0 dumps of a throwaway PostgreSQL cluster
(pgitest.Lab) holding a database of small tables, sequences and one big table.

Checks: split then join gives the archive back byte for byte, and pg_restore reads it; a second
split of the same archive writes nothing and leaves every piece's file as it was; a day of work
(rows added to a small table, rows appended to the big one) rewrites a few pieces only; a damaged
or missing piece, a damaged index and a folder that is not one are refused with the piece named
and leave no output; what is not a custom-format archive of a known version is not split (sent
whole by pgi-offsite); the command line (`python3 pgisplit.py join FOLDER OUT`) works without
anything else of the image.

Run: /usr/bin/python3 -m unittest -v test_pgisplit (as root, in this folder), or through vitest
(pgisplit.test.ts). The tests share one lab and run in order (test_NN_).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgitest  # noqa: E402

sys.path.insert(0, pgitest.LIB)
import pgisplit  # noqa: E402

setUpModule, tearDownModule = pgitest.use_lab(globals())
lab = None


def missing():
    return pgitest.missing_prerequisites()


def nightly_dump(db='shop'):
    """pgi-backup's dump of `db` (a new set each call): its path."""
    time.sleep(1.1)  # a new stamp (seconds)
    rc, out, err = lab.tool('pgi-backup')
    assert rc == 0, err
    return os.path.join(os.path.dirname(str(out).strip()), db + '.dump')


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def files(folder):
    out = {}
    for d, _, ns in os.walk(folder):
        for n in ns:
            st = os.stat(os.path.join(d, n))
            out[os.path.relpath(os.path.join(d, n), folder)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    return out


class Split(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        lab.psql('CREATE DATABASE shop')
        tables = ';'.join('CREATE TABLE t%02d (id serial PRIMARY KEY, v text); INSERT INTO t%02d (v) SELECT md5(i::text) FROM generate_series(1, %d) i'
                          % (i, i, 3 + i) for i in range(40))
        lab.psql(tables, db='shop')
        # about 400 kB of rows: cut into several pieces at rows chosen by their content
        lab.psql("CREATE TABLE big (id serial PRIMARY KEY, v text); INSERT INTO big (v) SELECT repeat(md5(i::text), 3) FROM generate_series(1, 4000) i", db='shop')
        cls.work = os.path.join(lab.dir, 'split')
        os.makedirs(cls.work)

    def test_01_split_then_join_gives_the_archive_back(self):
        dump = nightly_dump()
        folder = os.path.join(self.work, 'shop.dump.split')
        r = pgisplit.split(dump, folder)
        self.assertIsNotNone(r)
        self.assertEqual((r['written'], r['sha256']), (r['pieces'], sha(dump)))
        with open(os.path.join(folder, 'pieces.json')) as f:
            names = json.load(f)['pieces']
        self.assertGreater(len(names), 8)
        self.assertGreater(sum('/big-' in n and n.count('-') >= 3 for n in names), 2, 'the big table is cut at rows: %s' % names)
        # subfolders: the table of contents' pieces in one, small tables' groups and big tables'
        # pieces in their own
        self.assertTrue(all('/' in n for n in names))
        self.assertEqual({n.split('/')[0][:3] for n in names}, {'toc', 'dat', 'big'})
        out = os.path.join(self.work, 'joined.dump')
        pgisplit.join(folder, out)
        self.assertEqual(sha(out), sha(dump))
        r = subprocess.run([lab.pgbin + '/pg_restore', '--list', out], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('TABLE DATA public big', r.stdout)
        type(self).dump, type(self).folder = dump, folder

    def test_02_the_same_archive_again_touches_nothing(self):
        before = files(self.folder)
        r = pgisplit.split(self.dump, self.folder)
        self.assertEqual((r['written'], r['bytes_written']), (0, 0))
        self.assertEqual(files(self.folder), before)

    def test_03_a_day_of_work_rewrites_a_few_pieces(self):
        lab.psql("INSERT INTO t05 (v) SELECT 'new ' || i FROM generate_series(1, 20) i; "
                 "INSERT INTO big (v) SELECT repeat(md5((-i)::text), 3) FROM generate_series(1, 50) i", db='shop')
        dump = nightly_dump()
        before = files(self.folder)
        r = pgisplit.split(dump, self.folder)
        size = os.path.getsize(dump)
        sys.stderr.write('a day of work: %d of %d pieces rewritten, %d of %d bytes\n' % (r['written'], r['pieces'], r['bytes_written'], size))
        # t05's group, the big table's last piece, the sequences' values
        self.assertLessEqual(r['written'], 5)
        self.assertLess(r['bytes_written'], size * 0.2)
        after = files(self.folder)
        kept = [k for k in before if k in after and after[k] == before[k]]
        self.assertGreater(len(kept), len(before) - 8)
        # the sequences' new values (t05's gains a digit, 8 -> 28) are in index.json: no piece of
        # the table of contents is rewritten, nor layout.json
        toc = [k for k in before if k.startswith('toc/') or k == 'layout.json']
        self.assertGreater(len(toc), 3)
        self.assertEqual([k for k in toc if after.get(k) != before[k]], [])
        with open(os.path.join(self.folder, 'index.json')) as f:
            self.assertIn('28, true', json.load(f)['values'])
        out = os.path.join(self.work, 'joined2.dump')
        pgisplit.join(self.folder, out)
        self.assertEqual(sha(out), sha(dump))
        type(self).dump = dump

    def test_04_a_damaged_piece_is_refused_and_named(self):
        folder = os.path.join(self.work, 'damaged')
        shutil.copytree(self.folder, folder)
        with open(os.path.join(folder, 'pieces.json')) as f:
            names = json.load(f)['pieces']
        victim = next(n for n in names if n.split('/')[-1].startswith('data-'))
        path = os.path.join(folder, victim)
        with open(path, 'r+b') as f:
            b = f.read(1)
            f.seek(0)
            f.write(bytes([b[0] ^ 0xff]))
        out = os.path.join(self.work, 'never.dump')
        with self.assertRaises(pgisplit.JoinError) as e:
            pgisplit.join(folder, out)
        self.assertIn('is not the one split', str(e.exception))
        self.assertFalse(os.path.exists(out) or os.path.exists(out + '.joining'))
        with open(path, 'ab') as f:
            f.write(b'x')
        with self.assertRaises(pgisplit.JoinError) as e:
            pgisplit.join(folder, out)
        self.assertIn(victim.split('/')[-1], str(e.exception))
        os.unlink(path)
        with self.assertRaises(pgisplit.JoinError) as e:
            pgisplit.join(folder, out)
        self.assertIn('missing', str(e.exception))
        with open(os.path.join(folder, 'index.json'), 'w') as f:
            f.write('{"format": "pgi-split/1", "size": 1}')
        with self.assertRaises(pgisplit.JoinError):
            pgisplit.join(folder, out)
        with self.assertRaises(pgisplit.JoinError) as e:
            pgisplit.join(self.work, out)
        self.assertIn('layout.json', str(e.exception))
        self.assertFalse(os.path.exists(out) or os.path.exists(out + '.joining'))

    def test_05_what_is_not_a_known_archive_is_not_split(self):
        text = os.path.join(self.work, 'roles.sql')
        with open(text, 'w') as f:
            f.write('CREATE ROLE x;\n')
        self.assertIsNone(pgisplit.split(text, text + '.split'))
        self.assertFalse(os.path.exists(text + '.split'))
        cut = os.path.join(self.work, 'cut.dump')
        with open(self.dump, 'rb') as f, open(cut, 'wb') as g:
            g.write(f.read(os.path.getsize(self.dump) // 2))
        self.assertIsNone(pgisplit.split(cut, cut + '.split'))
        tar = os.path.join(self.work, 'shop.tar')
        r = subprocess.run([lab.pgbin + '/pg_dump', '-Ft', '-h', lab.sock, '-p', lab.pg_port, '-U', 'postgres', '-f', tar, 'shop'], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNone(pgisplit.split(tar, tar + '.split'))
        newer = os.path.join(self.work, 'newer.dump')
        with open(self.dump, 'rb') as f:
            data = bytearray(f.read())
        data[6] = 99  # archive version 1.99
        with open(newer, 'wb') as g:
            g.write(data)
        self.assertIsNone(pgisplit.split(newer, newer + '.split'))

    def test_06_the_command_line_joins_without_the_image(self):
        # the Région's runbook: the one file, any python3, no PGI server
        alone = os.path.join(self.work, 'alone')
        os.makedirs(alone)
        shutil.copy(os.path.join(pgitest.LIB, 'pgisplit.py'), alone)
        out = os.path.join(self.work, 'cli.dump')
        r = subprocess.run([sys.executable, '-I', os.path.join(alone, 'pgisplit.py'), 'join', self.folder, out], capture_output=True, text=True, cwd=alone)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sha(out), sha(self.dump))
        r = subprocess.run([sys.executable, '-I', os.path.join(alone, 'pgisplit.py'), 'join', self.work, out + '2'], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn('pgisplit:', r.stderr)
        r = subprocess.run([sys.executable, '-I', os.path.join(alone, 'pgisplit.py')], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn('usage', r.stderr)

    def test_07_a_folder_of_the_first_form_still_joins(self):
        # pgi-split/1 (the off-site copies pushed before the second form): the sequences' values
        # left in the pieces, the pieces' names in layout.json, the offsets' bytes in index.json
        lay = pgisplit._layout(self.dump)
        lay['values'] = []
        folder = os.path.join(self.work, 'first-form')
        names, sizes = [], []
        with open(self.dump, 'rb') as f:
            for name, start, end in pgisplit._pieces(lay):
                name = pgisplit._place(name)
                raw = b''.join(pgisplit._chunks(f, start, end))
                if name.startswith('toc'):
                    raw = pgisplit._blank(raw, start, lay)
                os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
                with open(os.path.join(folder, name), 'wb') as g:
                    g.write(raw)
                names.append(name)
                sizes.append(len(raw))
        offs = [e for e in lay['entries'] if e['flag'] == pgisplit.K_OFFSET_POS_SET]
        with open(os.path.join(folder, 'layout.json'), 'w') as g:
            json.dump({'format': 'pgi-split/1', 'pieces': names, 'offset_positions': [e['off_pos'] for e in offs],
                       'offset_bytes': len(offs[0]['off_raw'])}, g)
        with open(os.path.join(folder, 'index.json'), 'w') as g:
            json.dump({'format': 'pgi-split/1', 'size': lay['size'], 'sha256': sha(self.dump), 'sizes': sizes,
                       'offsets': b''.join(e['off_raw'] for e in offs).hex()}, g)
        out = os.path.join(self.work, 'first-form.dump')
        pgisplit.join(folder, out)
        self.assertEqual(sha(out), sha(self.dump))


if __name__ == '__main__':
    unittest.main()
