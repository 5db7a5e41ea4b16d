/**
 * Binary patches (src/image/patch.ts → pgi-stage-delta --patch), natively on this machine: two
 * versions of a small ext4 disk made as the image build makes them (mkfs.ext4 -d at the
 * partition's offset), the second with files changed in a few bytes, one added and one grown;
 * both chunked by casync into one store served by the lab's link simulator; the patch written by
 * the publisher's code and applied by the image's tool onto a loop device, the old version's disk
 * and tree as the seed. Shows: the disk comes out with the signed digest and far fewer bytes cross
 * the link than with chunks alone; a cut in the patch's download is resumed (Range); a file that
 * changed on the VM since it was deployed only costs the chunks it spoils (fetched instead); a
 * new version larger than the old, staged on a VM whose disk is larger still, rebuilds every chunk
 * (no reference reaches past the old image's end); a patch with a wrong digest is refused. Needs root (losetup), casync, debugfs, zstd, python3.
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {inflateSync} from 'node:zlib'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {mkfsFromTree} from '../../../src/image/ext4.js'
import {MemoryIo} from '../../../src/io.js'
import {makePatch, parseExtents, parseIcheck, parseNcheck, parseTypes, type PatchHeader} from '../../../src/image/patch.js'
import {CHUNK_SIZE, parseCaibx} from '../../../src/image/publish.js'
import {linkSimConfigFrom} from '../../../src/lab/link-sim-config.js'
import type {LinkSimulator} from '../../../src/lab/link-sim.js'
import {has, serveStore, tool} from './stage-delta-tool.js'

const missing = process.getuid?.() !== 0 ? 'not root (losetup)' : ['casync', 'debugfs', 'zstd', 'python3', 'sfdisk', 'mkfs.ext4'].find((t) => !has(t))

const SIZE = 48 * 2 ** 20
const PART = 2 ** 20

/** A disk as the image build makes it: a DOS partition table, ext4 from `tree` at 1 MiB. */
async function disk(tree: string, raw: string): Promise<string> {
  execFileSync('truncate', ['-s', String(SIZE), raw])
  execFileSync('sfdisk', ['-q', raw], {input: `label: dos\nlabel-id: 0x1234abcd\nunit: sectors\n\nstart=2048, type=83\n`})
  await mkfsFromTree({tree, image: raw, offset: PART, sizeBytes: SIZE - PART, label: 'pgi', uuid: '8a3f0a3e-4f7e-4b52-9c33-2b1c3c5d6e7f', hashSeed: '5b4c3d2e-1f0a-4b9c-8d7e-6f5a4b3c2d1e', epoch: 1_700_000_000})
  return createHash('sha256').update(readFileSync(raw)).digest('hex')
}

describe('debugfs output parsers', () => {
  it('reads icheck, ncheck (the root\'s // entries) and dump_extents -l', () => {
    expect([...parseIcheck('Block\tInode number\n1000\t<block not found>\n50000\t2730\n').entries()]).toEqual([[50000, 2730]])
    expect([...parseNcheck('Inode\tPathname\n12\t//bin\n2730\t/usr/lib/x.so\n2730\t/usr/lib/y.so\n').entries()]).toEqual([[12, '/bin'], [2730, '/usr/lib/x.so']])
    const ex = parseExtents('debugfs: dump_extents -l "/boot/vmlinuz"\nLevel Entries       Logical        Physical Length Flags\n 0/ 0   1/  2     0 -  3464  10001 -  13465   3465 \n 0/ 0   2/  2  3465 -  3465  20000 -  20000      1 Uninit\ndebugfs: dump_extents -l "/etc/x"\n')
    expect(ex.get('/boot/vmlinuz')).toEqual([[0, 10001, 3465], [3465, 20000, 1]])
    expect(ex.get('/etc/x')).toEqual([])
    const types = parseTypes('debugfs: stat "/usr"\nInode: 12   Type: directory    Mode:  0755   Flags: 0x80000\ndebugfs: stat "/usr/lib/x.so"\nInode: 2730   Type: regular    Mode:  0644\ndebugfs: stat "/nope"\n/nope: File not found by ext2_lookup\n')
    expect([...types.entries()]).toEqual([['/usr', 'directory'], ['/usr/lib/x.so', 'regular']])
  })
})

describe.skipIf(missing !== undefined)(`pgi-stage-delta --patch, native${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let dir: string
  let loop: string
  let sim: LinkSimulator
  let port: number
  let oldSha: string
  let newSha: string
  let indexSha: string
  let pack: {sha256: string; sizeBytes: number; chunks: number; chunkBytes: number; patched: number}
  let missingStored = 0

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pgi-patch-'))
    const v1 = join(dir, 'tree1')
    const v2 = join(dir, 'tree2')
    mkdirSync(join(v1, 'usr/lib'), {recursive: true})
    mkdirSync(join(v1, 'etc'), {recursive: true})
    // libraries of random bytes (incompressible: only a reference makes their new build cheap)
    for (let i = 0; i < 8; i++) writeFileSync(join(v1, `usr/lib/lib${i}.so`), randomBytes(700_000 + i * 37_000))
    writeFileSync(join(v1, 'etc/config'), 'setting = 1\n'.repeat(2000))
    cpSync(v1, v2, {recursive: true})
    // the new version: five libraries rebuilt (a few bytes here and there), one grown, one file added
    for (let i = 0; i < 5; i++) {
      const f = join(v2, `usr/lib/lib${i}.so`)
      const b = readFileSync(f)
      for (let k = 0; k < 6; k++) b.writeUInt32LE(k * 7919 + i, 50_000 + k * 100_000)
      writeFileSync(f, b)
    }
    writeFileSync(join(v2, 'usr/lib/lib5.so'), Buffer.concat([readFileSync(join(v2, 'usr/lib/lib5.so')), randomBytes(20_000)]))
    writeFileSync(join(v2, 'etc/added'), randomBytes(100_000))
    oldSha = await disk(v1, join(dir, 'old.raw'))
    newSha = await disk(v2, join(dir, 'new.raw'))
    const store = join(dir, 'store')
    const castr = join(store, 'default.castr')
    mkdirSync(join(store, 'pgi-tryton/1.0.0'), {recursive: true})
    mkdirSync(join(store, 'pgi-tryton/1.1.0'), {recursive: true})
    const make = (v: string, raw: string) => execFileSync('casync', ['make', `--store=${castr}`, '--compression=zstd', `--chunk-size=${CHUNK_SIZE.min}:${CHUNK_SIZE.avg}:${CHUNK_SIZE.max}`, join(store, `pgi-tryton/${v}/disk.caibx`), raw], {stdio: 'ignore'})
    make('1.0.0', join(dir, 'old.raw'))
    const before = new Set(execFileSync('find', [castr, '-name', '*.cacnk'], {encoding: 'utf8'}).split('\n'))
    make('1.1.0', join(dir, 'new.raw'))
    for (const f of execFileSync('find', [castr, '-name', '*.cacnk'], {encoding: 'utf8'}).split('\n')) if (f && !before.has(f)) missingStored += statSync(f).size
    const newIndex = readFileSync(join(store, 'pgi-tryton/1.1.0/disk.caibx'))
    indexSha = createHash('sha256').update(newIndex).digest('hex')
    mkdirSync(join(dir, 'work'))
    pack = await makePatch({
      name: 'pgi-tryton',
      from: {version: '1.0.0', raw: join(dir, 'old.raw'), rawSha256: oldSha, index: parseCaibx(readFileSync(join(store, 'pgi-tryton/1.0.0/disk.caibx')))},
      to: {version: '1.1.0', raw: join(dir, 'new.raw'), rawSha256: newSha, index: parseCaibx(newIndex)},
      out: join(store, 'pgi-tryton/1.1.0/from-1.0.0.pgipatch'),
      work: join(dir, 'work'),
      io: new MemoryIo(),
    })
    execFileSync('truncate', ['-s', String(SIZE), join(dir, 'target.img')])
    loop = execFileSync('losetup', ['-f', '--show', join(dir, 'target.img')], {encoding: 'utf8'}).trim()
    ;({sim, port} = await serveStore(store))
  }, 180_000)

  afterAll(async () => {
    await sim?.close()
    if (loop) spawnSync('losetup', ['-d', loop])
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  const args = (over: Record<string, string> = {}, patch = true) => {
    const a: Record<string, string> = {
      '--store': `http://127.0.0.1:${port}/`,
      '--index': 'pgi-tryton/1.1.0/disk.caibx',
      '--index-sha256': indexSha,
      '--raw-sha256': newSha,
      '--raw-size': String(SIZE),
      '--target': loop,
      '--seed': join(dir, 'old.raw'),
      ...(patch ? {'--patch': 'pgi-tryton/1.1.0/from-1.0.0.pgipatch', '--patch-sha256': pack.sha256, '--patch-size': String(pack.sizeBytes), '--seed-root': join(dir, 'tree1')} : {}),
      ...over,
    }
    return ['run', ...Object.entries(a).flat()]
  }
  const down = () => sim.stats()['lab1/1001']?.bytesDown ?? 0
  const blank = () => writeFileSync(loop, Buffer.alloc(SIZE))

  it('the publisher patches the changed libraries against their old copies: the pack is a small part of the chunks', () => {
    expect(pack.chunks).toBeGreaterThan(5)
    expect(pack.patched).toBeGreaterThan(0)
    // the added file (random) and the grown tail are sent whole; the rebuilt libraries as patches
    expect(pack.sizeBytes).toBeLessThan(missingStored * 0.5)
  })

  it('stages with the patch: the signed digest, and fewer bytes on the link than chunks alone', async () => {
    blank()
    const b0 = down()
    const chunksOnly = await tool(args({}, false), join(dir, 'state-chunks'))
    expect(chunksOnly.out).toMatchObject({state: 'done', sha256: newSha})
    const viaChunks = down() - b0
    blank()
    const b1 = down()
    const r = await tool(args(), join(dir, 'state-patch'))
    expect(r.out.error).toBeNull()
    expect(r.out).toMatchObject({state: 'done', sha256: newSha, rebuild_failed: 0})
    expect(r.out.rebuilt).toBe(pack.chunks)
    const viaPatch = down() - b1
    expect(viaPatch).toBeLessThan(viaChunks * 0.6)
    // what crossed the link: the index, the patch, and no chunk
    expect(viaPatch).toBeLessThan(pack.sizeBytes + 300_000)
    expect(createHash('sha256').update(readFileSync(join(dir, 'target.img')).subarray(0, SIZE)).digest('hex')).toBe(newSha)
  }, 180_000)

  it('a cut in the patch\'s download is resumed where it stopped (Range), and the disk comes out right', async () => {
    blank()
    const st = join(dir, 'state-cut')
    const cutAt = Math.floor(pack.sizeBytes / 2)
    sim.setConfig(linkSimConfigFrom({uplink: {ports: {80: {dir: join(dir, 'store')}}}, sites: {'lab1/1001': {cut_at_byte: cutAt}}}, 'test'))
    const b0 = down()
    const first = await tool(args(), st)
    expect(first.status).toBe(1)
    expect(String(first.out.error)).toMatch(/run again to resume/)
    sim.setConfig(linkSimConfigFrom({uplink: {ports: {80: {dir: join(dir, 'store')}}}}, 'test'))
    const second = await tool(args(), st)
    expect(second.out).toMatchObject({state: 'done', sha256: newSha})
    // the whole: about one patch (the index twice, the byte ranges in flight at the cut)
    expect(down() - b0).toBeLessThan(pack.sizeBytes * 1.05 + 300_000)
  }, 180_000)

  it('a file changed on the VM since its deploy spoils only its chunks: they are fetched, the disk is still right', async () => {
    blank()
    const drifted = join(dir, 'tree1-drifted')
    cpSync(join(dir, 'tree1'), drifted, {recursive: true})
    const f = join(drifted, 'usr/lib/lib0.so')
    const b = readFileSync(f)
    b.fill(0, 0, 200_000)
    writeFileSync(f, b)
    const r = await tool(args({'--seed-root': drifted}), join(dir, 'state-drift'))
    expect(r.out).toMatchObject({state: 'done', sha256: newSha})
    expect(Number(r.out.rebuild_failed)).toBeGreaterThan(0)
    expect(Number(r.out.rebuilt)).toBeGreaterThan(0)
  }, 180_000)

  it('a signed file that is not a patch (or for another disk) costs its bytes, not the staging: chunks only, said in patch_error', async () => {
    blank()
    const bogus = randomBytes(5000)
    writeFileSync(join(dir, 'store', 'pgi-tryton/1.1.0/bogus.pgipatch'), bogus)
    const r = await tool(args({'--patch': 'pgi-tryton/1.1.0/bogus.pgipatch', '--patch-sha256': createHash('sha256').update(bogus).digest('hex'), '--patch-size': String(bogus.length)}), join(dir, 'state-bogus'))
    expect(r.out).toMatchObject({state: 'done', sha256: newSha})
    expect(String(r.out.patch_error)).toMatch(/patch not used: not a pgi patch/)
  }, 120_000)

  it('an old disk smaller than the new, on a VM whose disk was grown (bytes past the old image\'s end): every chunk still rebuilt', async () => {
    // disks without a file system (references: the old disk at the same offsets only); the new
    // one is the old with a few bytes changed and 1 MiB more; the VM's disk holds the old image
    // and then other bytes, as an OS disk grown at deploy does: a reference reaching past the
    // old image's end would read them in the guest but zeros in the publisher
    const store = join(dir, 'store')
    const castr = join(store, 'default.castr')
    const old = randomBytes(2 * 2 ** 20)
    old.writeUInt16LE(0, 510)
    // the new tail mostly zeros (free space), as a disk's is
    const tail = Buffer.alloc(2 ** 20)
    for (let k = 0; k < 16; k++) randomBytes(4096).copy(tail, k * 65_536)
    const grown = Buffer.concat([old, tail])
    for (let k = 0; k < 8; k++) grown.writeUInt32LE(k * 7919, 100_000 + k * 250_000)
    writeFileSync(join(dir, 'small-old.raw'), old)
    writeFileSync(join(dir, 'small-new.raw'), grown)
    writeFileSync(join(dir, 'small-vm.raw'), Buffer.concat([old, randomBytes(4 * 2 ** 20)]))
    for (const [v, raw] of [['2.0.0', 'small-old.raw'], ['2.1.0', 'small-new.raw']] as const) {
      mkdirSync(join(store, `pgi-tryton/${v}`), {recursive: true})
      execFileSync('casync', ['make', `--store=${castr}`, '--compression=zstd', `--chunk-size=${CHUNK_SIZE.min}:${CHUNK_SIZE.avg}:${CHUNK_SIZE.max}`, join(store, `pgi-tryton/${v}/disk.caibx`), join(dir, raw)], {stdio: 'ignore'})
    }
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
    const index = readFileSync(join(store, 'pgi-tryton/2.1.0/disk.caibx'))
    mkdirSync(join(dir, 'work-small'))
    const p = await makePatch({
      name: 'pgi-tryton',
      from: {version: '2.0.0', raw: join(dir, 'small-old.raw'), rawSha256: sha(old), index: parseCaibx(readFileSync(join(store, 'pgi-tryton/2.0.0/disk.caibx')))},
      to: {version: '2.1.0', raw: join(dir, 'small-new.raw'), rawSha256: sha(grown), index: parseCaibx(index)},
      out: join(store, 'pgi-tryton/2.1.0/from-2.0.0.pgipatch'),
      work: join(dir, 'work-small'),
      io: new MemoryIo(),
    })
    // no reference reaches past the old image's end (what the publisher read there is not what a VM holds)
    const pack = readFileSync(join(store, 'pgi-tryton/2.1.0/from-2.0.0.pgipatch'))
    const header = JSON.parse(inflateSync(pack.subarray(12, 12 + pack.readUInt32LE(8))).toString()) as PatchHeader
    const disk = header.chunks.flatMap((c) => c[3].filter((ref) => ref[0] === 'd'))
    expect(disk.length).toBeGreaterThan(5)
    for (const ref of disk) expect(ref[1] + (ref[2] as number)).toBeLessThanOrEqual(old.length)
    blank()
    const r = await tool(args({
      '--index': 'pgi-tryton/2.1.0/disk.caibx',
      '--index-sha256': sha(index),
      '--raw-sha256': sha(grown),
      '--raw-size': String(grown.length),
      '--seed': join(dir, 'small-vm.raw'),
      '--patch': 'pgi-tryton/2.1.0/from-2.0.0.pgipatch',
      '--patch-sha256': p.sha256,
      '--patch-size': String(p.sizeBytes),
    }), join(dir, 'state-small'))
    expect(r.out).toMatchObject({state: 'done', sha256: sha(grown), rebuild_failed: 0})
    expect(r.out.rebuilt).toBe(p.chunks)
  }, 120_000)

  it('a patch whose bytes are not the signed ones is refused (and not applied)', async () => {
    blank()
    const r = await tool(args({'--patch-sha256': 'a'.repeat(64)}), join(dir, 'state-bad'))
    expect(r.status).toBe(1)
    expect(String(r.out.error)).toMatch(/sha256 [0-9a-f]{64}, the signed delivery.json says a{64}/)
    const u = await tool(args({'--patch-size': '0'}), join(dir, 'state-bad'))
    expect(u.status).toBe(2)
  }, 120_000)
})
