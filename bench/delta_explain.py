#!/usr/bin/env python3
"""Where a version's delta goes (bench/delta.mjs --explain), on the new version's raw disk:

- each new chunk (given as [start, end, stored bytes]) is mapped to the files owning its blocks
  (debugfs `icheck` then `ncheck` on a read-only loop device of the disk's ext4 partition), its
  stored size shared among them;
- the floor of any delivery that sends changed files whole: the given changed files (paths), read
  from the mounted partition and compressed one by one with zstd -3;
- with FROM.raw (the old version's disk), the floor of a delivery that sends changed files as
  binary deltas against their old copies (as OSTree's static deltas do with bsdiff): each changed
  file as `zstd -19 --patch-from=OLD` where the old version has it (same path, or the same path
  under the old kernel release for the kernel's files), else whole at -19; the smaller of the two.

Usage: delta_explain.py TO.raw [FROM.raw] < {"chunks": [[start, end, bytes], ...], "changed": [path, ...]}
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


def partition_offset(raw):
    table = json.loads(subprocess.run(['sfdisk', '-J', raw], capture_output=True, text=True, check=True).stdout)['partitiontable']
    return table['partitions'][0]['start'] * table.get('sectorsize', 512)


def zstd_size(args, path):
    return len(subprocess.run(['zstd', '-c', '-q', *args, path], capture_output=True, check=True).stdout)


def kernel_release(root):
    """The one kernel release an image holds (its /usr/lib/modules folder), or None."""
    try:
        names = os.listdir(root + '/usr/lib/modules')
    except FileNotFoundError:
        return None
    return names[0] if len(names) == 1 else None


def patch_floor(old_root, new_root, changed):
    """Each changed file as a zstd -19 --patch-from delta against its old copy, or whole at -19:
    (bytes whole, bytes as deltas, deltas per group)."""
    kold, knew = kernel_release(old_root), kernel_release(new_root)
    whole = patched = 0
    by_group = collections.Counter()
    for p in changed:
        new = new_root + p
        w = zstd_size(['-19'], new)
        old = old_root + (p.replace(knew, kold) if kold and knew else p)
        # zstd sizes its window to reach the whole old copy itself (long mode, when needed)
        d = min(w, zstd_size(['-19', '--patch-from=' + old], new)) if os.path.isfile(old) else w
        whole += w
        patched += d
        by_group[group_of(p)] += d
    return whole, patched, by_group


def with_mounted(raw, fn):
    """Runs fn(partition offset, loop device, mount point) with the disk's ext4 partition on a
    read-only loop device, mounted read-only (debugfs reads the device beside the mount)."""
    part = partition_offset(raw)
    loop = subprocess.run(['losetup', '-f', '--show', '-r', '-o', str(part), raw], capture_output=True, text=True, check=True).stdout.strip()
    mnt = tempfile.mkdtemp(prefix='pgi-delta-explain-')
    try:
        subprocess.run(['mount', '-o', 'ro,noload', loop, mnt], check=True)
        try:
            return fn(part, loop, mnt)
        finally:
            subprocess.run(['umount', mnt])
    finally:
        subprocess.run(['losetup', '-d', loop])
        os.rmdir(mnt)


def explain(rows, changed, old_raw, part, loop, mnt):
    top = lambda c, n: [[k, round(v)] for k, v in c.most_common(n)]  # noqa: E731
    span = lambda s, e: range(max(0, (s - part) // BS), (e - part - 1) // BS + 1)  # noqa: E731
    blocks = sorted({b for s, e, _ in rows if e > part for b in span(s, e)})
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
    raw_bytes = zbytes = 0
    floor = collections.Counter()
    for p in changed:
        z = zstd_size(['-3'], mnt + p)
        raw_bytes += os.path.getsize(mnt + p)
        zbytes += z
        floor[group_of(p)] += z
    patch = {}
    if old_raw:
        z19, patched, by_patch = with_mounted(old_raw, lambda _p, _l, old_mnt: patch_floor(old_mnt, mnt, changed))
        patch = {'zstd19_bytes': z19, 'patch_from_bytes': patched, 'patch_by_group': top(by_patch, 10)}
    return {
        'chunks': {'count': len(rows), 'bytes': sum(z for _, _, z in rows), 'by_group': top(by_group, 15), 'top_files': top(by_file, 15)},
        'changed_files': {'count': len(changed), 'bytes': raw_bytes, 'zstd3_bytes': zbytes, 'by_group': top(floor, 10), **patch},
    }


def main():
    raw = sys.argv[1]
    old_raw = sys.argv[2] if len(sys.argv) > 2 else None
    req = json.load(sys.stdin)
    json.dump(with_mounted(raw, lambda part, loop, mnt: explain(req['chunks'], req['changed'], old_raw, part, loop, mnt)), sys.stdout)
    print()


if __name__ == '__main__':
    main()
