import {createHash} from 'node:crypto'
import {link, lutimes, mkdir, mkdtemp, readFile, rm, symlink, truncate, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {run} from '../../../src/exec.js'
import {addJournal, fsTarget, mkfsFromTree, parseInodeMtimes, parseSizeAndBlocks, pinInodes, pinSuperblock, sparseFiles, usedInodes} from '../../../src/image/ext4.js'

/**
 * The image's file system gives the same bytes for the same tree, whenever and in whatever order
 * the tree was written (src/image/ext4.ts). Real e2fsprogs on small image files; no root needed.
 */
const EPOCH = 1767225600

describe('usedInodes', () => {
  it('reads the inodes in use from dumpe2fs\'s free lists, group by group', () => {
    const out = [
      'Inode count:              24',
      'Inodes per group:         8',
      'Group 0: (Blocks 0-32767) csum 0x9d1e [ITABLE_ZEROED]',
      '  Free inodes: ',
      'Group 1: (Blocks 32768-65535)',
      '  Free inodes: 12-13, 15',
      'Group 2: (Blocks 65536-98303)',
      '  Free inodes: 17-24',
    ].join('\n')
    // 1-10 reserved (2, 7 and 8 kept), then 11, 14 and 16 in use
    expect(usedInodes(out)).toEqual([2, 7, 8, 11, 14, 16])
  })

  it('refuses output it does not understand rather than pin part of the inodes', () => {
    expect(() => usedInodes('Inode count: 16\nInodes per group: 8\n  Free inodes: 1-8\n')).toThrow(/1 "Free inodes" lists for 2 groups/)
    expect(() => usedInodes('Inode count: 8\nInodes per group: 8\n  Free inodes: 3-x\n')).toThrow(/unexpected free inode range/)
    expect(() => usedInodes('nothing')).toThrow(/inode count/)
  })
})

describe('the image file system from a tree', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, {recursive: true, force: true})
  })

  // names debugfs cannot take as a path (a backslash as in systemd's unit names, a double quote,
  // a newline), a space, non-ASCII, a hard link, a symbolic link, an empty file, a big folder
  const FILES: [string, string][] = [
    ['usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice', '[Unit]\n'],
    ['etc/a "quoted" name', 'q\n'],
    ['etc/a\nnewline', 'n\n'],
    ['etc/with space', 's\n'],
    ['etc/élève.conf', 'é\n'],
    ['etc/empty', ''],
    ...Array.from({length: 300}, (_, i): [string, string] => [`usr/share/many/f${(i * 7919) % 300}`, `${i}\n`]),
  ]

  /** Writes the tree in `order`, then gives it the build's clamped mtimes and arbitrary atimes. */
  async function tree(root: string, order: 'forward' | 'reverse', atime: number): Promise<void> {
    const files = order === 'forward' ? FILES : [...FILES].reverse()
    for (const [p, content] of files) {
      await mkdir(join(root, p, '..'), {recursive: true})
      await writeFile(join(root, p), content)
    }
    await link(join(root, 'etc/empty'), join(root, 'etc/empty-link'))
    await symlink('../usr/lib/systemd/system', join(root, 'etc/units'))
    const all = (await run('find', [root, '-print0'])).stdout.split('\0').filter(Boolean)
    for (const p of all) await lutimes(p, atime, EPOCH)
  }

  async function image(dir: string, pin: boolean): Promise<string> {
    const img = join(dir, 'disk.raw')
    await writeFile(img, '')
    await truncate(img, 33 * 1024 * 1024)
    const target = fsTarget(img, 1024 * 1024)
    await mkfsFromTree({tree: join(dir, 'root'), image: img, offset: 1024 * 1024, sizeBytes: 32 * 1024 * 1024, label: 't', uuid: 'a1bf0bf8-7b6d-4add-891c-beb30cb9edaf', hashSeed: '0c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6', epoch: EPOCH})
    if (pin) {
      await pinSuperblock(target, EPOCH)
      await addJournal(target, EPOCH)
      await pinInodes(target, EPOCH)
    }
    return createHash('sha256').update(await readFile(img)).digest('hex')
  }

  it('gives the same bytes for trees written at different times, in different orders, read at different times', async () => {
    const a = await mkdtemp(join(tmpdir(), 'pgi-ext4-a-'))
    dirs.push(a)
    await tree(join(a, 'root'), 'forward', EPOCH + 100)
    // ctimes one second or more apart: mkfs.ext4 -d copies them with a one-second resolution
    await new Promise((r) => setTimeout(r, 1100))
    const b = await mkdtemp(join(tmpdir(), 'pgi-ext4-b-'))
    dirs.push(b)
    await tree(join(b, 'root'), 'reverse', EPOCH + 5000)

    // what mkfs.ext4 -d alone gives differs (the premise: the ctimes and atimes are copied)
    expect(await image(a, false)).not.toBe(await image(b, false))
    expect(await image(a, true)).toBe(await image(b, true))
  })

  it('has every file with its content, and the times set to SOURCE_DATE_EPOCH', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pgi-ext4-c-'))
    dirs.push(dir)
    await tree(join(dir, 'root'), 'forward', EPOCH + 100)
    await image(dir, true)
    const target = fsTarget(join(dir, 'disk.raw'), 1024 * 1024)
    await run('e2fsck', ['-fn', target])
    const cat = await run('debugfs', ['-R', 'cat "/usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice"', target])
    expect(cat.stdout).toBe('[Unit]')
    const stat = (await run('debugfs', ['-R', 'stat "/etc/with space"', target])).stdout
    for (const t of ['ctime', 'atime', 'mtime', 'crtime']) expect(stat).toMatch(new RegExp(`${t}: 0x${EPOCH.toString(16)}:00000000`))
    const links = (await run('debugfs', ['-R', 'stat /etc/empty', target])).stdout
    expect(links).toMatch(/Links: 2/)
  })
  it("gives each inode its own mtime as ctime, atime and creation time: a file older than the build keeps its inode's bytes whatever SOURCE_DATE_EPOCH", async () => {
    const OLD = EPOCH - 86_400 * 365
    const one = async (epoch: number): Promise<string> => {
      const dir = await mkdtemp(join(tmpdir(), 'pgi-ext4-t-'))
      dirs.push(dir)
      await tree(join(dir, 'root'), 'forward', EPOCH + 100)
      await lutimes(join(dir, 'root', 'etc', 'with space'), OLD, OLD)
      const img = join(dir, 'disk.raw')
      await writeFile(img, '')
      await truncate(img, 33 * 1024 * 1024)
      const target = fsTarget(img, 1024 * 1024)
      await mkfsFromTree({tree: join(dir, 'root'), image: img, offset: 1024 * 1024, sizeBytes: 32 * 1024 * 1024, label: 't', uuid: 'a1bf0bf8-7b6d-4add-891c-beb30cb9edaf', hashSeed: '0c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6', epoch})
      await pinSuperblock(target, epoch)
      await addJournal(target, epoch)
      await pinInodes(target, epoch, {mtimePaths: ['/lost+found', '<7>', '<8>'], pathsTime: OLD})
      const stat = (await run('debugfs', ['-R', 'stat "/etc/with space"', target])).stdout
      for (const t of ['ctime', 'atime', 'mtime', 'crtime']) expect(stat).toMatch(new RegExp(`${t}: 0x${OLD.toString(16)}:00000000`))
      const journal = (await run('debugfs', ['-R', 'stat <8>', target])).stdout
      for (const t of ['ctime', 'mtime']) expect(journal).toMatch(new RegExp(`${t}: 0x${OLD.toString(16)}:00000000`))
      await run('e2fsck', ['-fn', target])
      const inode = Number(/Inode: (\d+)/.exec(stat)![1])
      // the inode table block holding that file's inode: the same bytes under both epochs
      const sb = (await run('dumpe2fs', ['-h', target])).stdout
      const itable = (await run('dumpe2fs', [target])).stdout
      const perGroup = Number(/^Inodes per group:\s+(\d+)/m.exec(sb)![1])
      const size = Number(/^Inode size:\s+(\d+)/m.exec(sb)![1])
      const group = Math.floor((inode - 1) / perGroup)
      const start = Number(new RegExp(`^Group ${group}:[\\s\\S]*?Inode table at (\\d+)`, 'm').exec(itable)![1])
      const at = 1024 * 1024 + start * 4096 + ((inode - 1) % perGroup) * size
      const bytes = (await readFile(img)).subarray(at, at + size)
      return createHash('sha256').update(bytes).digest('hex')
    }
    expect(await one(EPOCH)).toBe(await one(EPOCH + 86_400 * 30))
  })

  it('reads the mtimes of debugfs stat output, large and small inodes', () => {
    const out = ['Inode: 12   Type: regular    Mode:  0644   Flags: 0x80000', 'Inode checksum: 0x1234', ' ctime: 0x6b14478f:00000000 -- Sat Dec  5 17:19:11 2026', ' mtime: 0x5f000000:00000000 -- x', 'crtime: 0x6b14478f:00000000 -- x',
      'Inode: 7   Type: regular', 'ctime: 0x00000010 -- x', 'mtime: 0x00000011 -- x'].join('\n')
    expect([...parseInodeMtimes(out)]).toEqual([[12, 0x5f000000], [7, 0x11]])
  })

  it('finds the files mkfs.ext4 -d stored with holes (what extlinux cannot load), and only those', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pgi-ext4-sparse-'))
    dirs.push(dir)
    await mkdir(join(dir, 'root', 'boot'), {recursive: true})
    const page = (b: number) => Buffer.alloc(4096, b)
    // a 4 KiB block of zeros between data: stored as a hole; the same size without: not
    await writeFile(join(dir, 'root', 'boot', 'initrd.img'), Buffer.concat([page(1), page(0), page(2), Buffer.from('end')]))
    await writeFile(join(dir, 'root', 'boot', 'vmlinuz'), Buffer.concat([page(1), page(3), page(2), Buffer.from('end')]))
    const img = join(dir, 'disk.raw')
    await mkfsFromTree({tree: join(dir, 'root'), image: img, offset: 1024 * 1024, sizeBytes: 32 * 1024 * 1024, label: 't', uuid: 'a1bf0bf8-7b6d-4add-891c-beb30cb9edaf', hashSeed: '0c1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6', epoch: EPOCH})
    const target = fsTarget(img, 1024 * 1024)
    expect(await sparseFiles(target, ['/boot/vmlinuz', '/boot/initrd.img'])).toEqual(['/boot/initrd.img'])
    await expect(sparseFiles(target, ['/boot/vmlinuz', '/boot/none'])).rejects.toThrow(/2 files asked, 1 read/)
  })

  it('reads sizes and block counts of debugfs stat output, in order', () => {
    const out = ['Inode: 19   Type: regular    Mode:  0644   Flags: 0x80000', 'User:     0   Group:     0   Project:     0   Size: 14190528', 'Links: 1   Blockcount: 27720', 'Fragment:  Address: 0    Number: 0    Size: 0',
      'Inode: 18   Type: regular    Mode:  0644   Flags: 0x80000', 'User:     0   Group:     0   Project:     0   Size: 16252416', 'Links: 1   Blockcount: 31688', 'Fragment:  Address: 0    Number: 0    Size: 0'].join('\n')
    expect(parseSizeAndBlocks(out)).toEqual([{size: 14190528, blocks512: 27720}, {size: 16252416, blocks512: 31688}])
  })
})
