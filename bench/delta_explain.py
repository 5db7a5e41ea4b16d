#!/usr/bin/env python3
"""Where a version's delta goes (bench/delta.mjs --explain): each chunk of the new version that the
old one lacks is mapped to the files owning its blocks on the new version's raw disk (debugfs
`icheck` then `ncheck` on a read-only loop device of its ext4 partition), its compressed size shared
among them; and the floor of any delivery that sends changed files whole: the files whose sha256
differs between the two versions' files.txt, compressed one by one with zstd -3.

Usage: delta_explain.py STORE FROM.caibx TO.caibx TO.raw FROM_FILES.txt TO_FILES.txt
Prints one JSON object. Needs root (losetup, mount), debugfs, zstd.
"""
import collections
import json
import os
import struct
import subprocess
import sys
import tempfile

PART = 2048 * 512  # the image's one partition starts at 1 MiB (src/image/build.ts)
BS = 4096


def index(path):
    """(start, end, chunk id) of each chunk of a casync .caibx (caformat.h: index header, table)."""
    b = open(path, 'rb').read()
    size, _ = struct.unpack_from('<QQ', b, 0)
    pos = size + 16
    items, start = [], 0
    while pos + 40 <= len(b):
        (end,) = struct.unpack_from('<Q', b, pos)
        if end == 0:
            break
        items.append((start, end, b[pos + 8:pos + 40].hex()))
        start, pos = end, pos + 40
    return items


def group_of(path):
    if path.startswith(('/boot/', '/usr/lib/modules/', '/lib/modules/')):
        return 'kernel (modules, vmlinuz, initramfs)'
    return '/'.join(path.split('/')[:4]) if path.startswith('/') else path


def debugfs(dev, cmd, args):
    out = {}
    for i in range(0, len(args), 2000):
        r = subprocess.run(['debugfs', '-R', cmd + ' ' + ' '.join(map(str, args[i:i + 2000])), dev], capture_output=True, text=True)
        for line in r.stdout.splitlines()[1:]:
            p = line.split(None, 1)
            if len(p) == 2 and p[0].isdigit():
                out.setdefault(int(p[0]), p[1].strip())
    return out


def main():
    store, old_idx, new_idx, raw, old_files, new_files = sys.argv[1:7]
    have = {c for _, _, c in index(old_idx)}
    rows, seen = [], set()
    for s, e, c in index(new_idx):
        if c in have or c in seen:
            continue
        seen.add(c)
        rows.append((s, e, os.path.getsize(os.path.join(store, 'default.castr', c[:4], c + '.cacnk'))))
    blocks = sorted({b for s, e, _ in rows if e > PART for b in range(max(0, (s - PART) // BS), (e - PART - 1) // BS + 1)})
    loop = subprocess.run(['losetup', '-f', '--show', '-r', '-o', str(PART), raw], capture_output=True, text=True, check=True).stdout.strip()
    mnt = tempfile.mkdtemp(prefix='pgi-delta-explain-')
    try:
        owner = {b: o for b, o in debugfs(loop, 'icheck', blocks).items() if o.isdigit()}
        names = debugfs(loop, 'ncheck', sorted({int(o) for o in owner.values()}))
        by_file = collections.Counter()
        for s, e, z in rows:
            if e <= PART:
                by_file['<boot sector, partition table>'] += z
                continue
            b0, b1 = max(0, (s - PART) // BS), (e - PART - 1) // BS
            for b in range(b0, b1 + 1):
                o = owner.get(b)
                by_file[names.get(int(o), '<inode %s>' % o) if o else '<file system metadata, free>'] += z / (b1 - b0 + 1)
        by_group = collections.Counter()
        for k, v in by_file.items():
            by_group[group_of(k)] += v

        def hashes(path):
            d = {}
            for line in open(path):
                p = line.rstrip('\n').split(' ', 4)
                if p[0] == 'f':
                    d[p[4]] = p[3]
            return d
        a, b = hashes(old_files), hashes(new_files)
        changed = [p for p, h in b.items() if a.get(p) != h]
        subprocess.run(['mount', '-o', 'ro,noload', loop, mnt], check=True)
        raw_bytes = zbytes = 0
        floor = collections.Counter()
        try:
            for p in changed:
                data = open(mnt + p, 'rb').read()
                z = len(subprocess.run(['zstd', '-3', '-c', '-q'], input=data, capture_output=True, check=True).stdout)
                raw_bytes += len(data)
                zbytes += z
                floor[group_of(p)] += z
        finally:
            subprocess.run(['umount', mnt])
    finally:
        subprocess.run(['losetup', '-d', loop])
        os.rmdir(mnt)
    top = lambda c, n: [[k, round(v)] for k, v in c.most_common(n)]  # noqa: E731
    json.dump({
        'chunks': {'count': len(rows), 'bytes': sum(z for _, _, z in rows), 'by_group': top(by_group, 15), 'top_files': top(by_file, 15)},
        'changed_files': {'count': len(changed), 'bytes': raw_bytes, 'zstd3_bytes': zbytes, 'by_group': top(floor, 10)},
    }, sys.stdout)
    print()


if __name__ == '__main__':
    main()
