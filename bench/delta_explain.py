#!/usr/bin/env python3
"""Where a version's delta goes (bench/delta.mjs --explain), on the new version's raw disk:

- each new chunk (given as [start, end, stored bytes]) is mapped to the files owning its blocks
  (debugfs `icheck` then `ncheck` on a read-only loop device of the disk's ext4 partition), its
  stored size shared among them;
- the floor of any delivery that sends changed files whole: the given changed files (paths), read
  from the mounted partition and compressed one by one with zstd -3.

Usage: delta_explain.py TO.raw < {"chunks": [[start, end, bytes], ...], "changed": [path, ...]}
Prints one JSON object. Needs root (losetup, mount), sfdisk, debugfs, zstd. The chunk list and the
files' comparison come from bench/delta.mjs (pgi's own casync index reader); only what needs the
disk is done here.
"""
import collections
import json
import os
import subprocess
import sys
import tempfile

BS = 4096  # the image's ext4 block size (mkfs.ext4 -T default)


def group_of(path):
    if path.startswith(('/boot/', '/usr/lib/modules/', '/lib/modules/')):
        return 'kernel (modules, vmlinuz, initramfs)'
    return '/'.join(path.split('/')[:4]) if path.startswith('/') else path


def debugfs(dev, cmd, args):
    """`debugfs -R "cmd a b c"` in batches → {first column: rest of the line}."""
    out = {}
    for i in range(0, len(args), 2000):
        r = subprocess.run(['debugfs', '-R', cmd + ' ' + ' '.join(map(str, args[i:i + 2000])), dev], capture_output=True, text=True)
        for line in r.stdout.splitlines()[1:]:
            p = line.split(None, 1)
            if len(p) == 2 and p[0].isdigit():
                out.setdefault(int(p[0]), p[1].strip())
    return out


def main():
    raw = sys.argv[1]
    req = json.load(sys.stdin)
    rows, changed = req['chunks'], req['changed']
    table = json.loads(subprocess.run(['sfdisk', '-J', raw], capture_output=True, text=True, check=True).stdout)['partitiontable']
    part = table['partitions'][0]['start'] * table.get('sectorsize', 512)
    span = lambda s, e: range(max(0, (s - part) // BS), (e - part - 1) // BS + 1)  # noqa: E731
    blocks = sorted({b for s, e, _ in rows if e > part for b in span(s, e)})
    loop = subprocess.run(['losetup', '-f', '--show', '-r', '-o', str(part), raw], capture_output=True, text=True, check=True).stdout.strip()
    mnt = tempfile.mkdtemp(prefix='pgi-delta-explain-')
    try:
        owner = {b: o for b, o in debugfs(loop, 'icheck', blocks).items() if o.isdigit()}
        names = debugfs(loop, 'ncheck', sorted({int(o) for o in owner.values()}))
        by_file = collections.Counter()
        for s, e, z in rows:
            if e <= part:
                by_file['<boot sector, partition table>'] += z
                continue
            bs = span(s, e)
            for b in bs:
                o = owner.get(b)
                by_file[names.get(int(o), '<inode %s>' % o) if o else '<file system metadata, free>'] += z / len(bs)
        by_group = collections.Counter()
        for k, v in by_file.items():
            by_group[group_of(k)] += v
        subprocess.run(['mount', '-o', 'ro,noload', loop, mnt], check=True)
        raw_bytes = zbytes = 0
        floor = collections.Counter()
        try:
            for p in changed:
                with open(mnt + p, 'rb') as f:
                    data = f.read()
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
