/**
 * pgi-stage-delta (the in-image tool of delta staging) run natively on this machine: a casync
 * store made here, served by the lab's directory server through the lab's link simulator (cut at a
 * byte count, then restored), a loop device as the blank staging disk. Shows: a cut run fails and
 * says to run again, the rerun resumes from what the disk already holds (total bytes on the link
 * close to one uninterrupted transfer) and ends with the disk's sha256 checked; a wrong signed
 * digest and a target that is not a block device are refused. Needs root (losetup), casync and
 * python3: skipped with the reason otherwise.
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {linkSimConfigFrom} from '../../../src/lab/link-sim-config.js'
import type {LinkSimulator} from '../../../src/lab/link-sim.js'
import {has, serveStore, tool} from './stage-delta-tool.js'

const missing = process.getuid?.() !== 0 ? 'not root (losetup)' : !has('casync') ? 'casync not installed' : !has('losetup') ? 'no losetup' : !has('python3') ? 'no python3' : undefined

describe.skipIf(missing !== undefined)(`pgi-stage-delta, native${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let dir: string
  let loop: string
  let sim: LinkSimulator
  let port: number
  const SIZE = 6_000_000
  let blob: Buffer
  let rawSha: string
  let indexSha: string

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pgi-stage-delta-'))
    // a disk: half random (chunks no seed has), half the seed's bytes (found locally)
    const seed = randomBytes(SIZE / 2)
    blob = Buffer.concat([randomBytes(SIZE / 2), seed])
    writeFileSync(join(dir, 'seed.raw'), seed)
    writeFileSync(join(dir, 'disk.raw'), blob)
    rawSha = createHash('sha256').update(blob).digest('hex')
    const store = join(dir, 'store')
    mkdirSync(join(store, 'pgi-tryton', '1.1.0'), {recursive: true})
    execFileSync('casync', ['make', `--store=${join(store, 'default.castr')}`, join(store, 'pgi-tryton', '1.1.0', 'disk.caibx'), join(dir, 'disk.raw')], {stdio: 'ignore'})
    indexSha = createHash('sha256').update(readFileSync(join(store, 'pgi-tryton', '1.1.0', 'disk.caibx'))).digest('hex')
    writeFileSync(join(dir, 'target.img'), Buffer.alloc(0))
    execFileSync('truncate', ['-s', String(SIZE + 512), join(dir, 'target.img')])
    loop = execFileSync('losetup', ['-f', '--show', join(dir, 'target.img')], {encoding: 'utf8'}).trim()
    ;({sim, port} = await serveStore(store, {cut_at_byte: 1_500_000}))
  }, 60_000)

  afterAll(async () => {
    await sim?.close()
    if (loop) spawnSync('losetup', ['-d', loop])
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  const args = (over: Record<string, string> = {}) => {
    const a: Record<string, string> = {
      '--store': `http://127.0.0.1:${port}/`,
      '--index': 'pgi-tryton/1.1.0/disk.caibx',
      '--index-sha256': indexSha,
      '--raw-sha256': rawSha,
      '--raw-size': String(SIZE),
      '--target': loop,
      '--seed': join(dir, 'seed.raw'),
      ...over,
    }
    return ['run', ...Object.entries(a).flat()]
  }

  it('refuses bad usage with exit 2 and a target that is not a block device', async () => {
    const st = join(dir, 'state-usage')
    expect((await tool(['run', '--store', 'ftp://x/'], st)).status).toBe(2)
    const r = await tool([...args({'--raw-sha256': 'abc'})], st)
    expect(r.status).toBe(2)
    expect(String(r.out.error)).toMatch(/64 hex digits/)
    const f = await tool(args({'--target': join(dir, 'disk.raw')}), st)
    expect(f.status).toBe(1)
    expect(String(f.out.error)).toMatch(/not a block device/)
  })

  it('refuses a staging disk with a mounted file system (it would be the data disk or another)', async () => {
    const img = join(dir, 'fs.img')
    execFileSync('truncate', ['-s', '8M', img])
    const dev = execFileSync('losetup', ['-f', '--show', img], {encoding: 'utf8'}).trim()
    const mnt = join(dir, 'mnt')
    mkdirSync(mnt)
    try {
      execFileSync('mkfs.ext4', ['-q', dev])
      execFileSync('mount', [dev, mnt])
      try {
        const r = await tool(args({'--target': dev, '--raw-size': '4096'}), join(dir, 'state-mounted'))
        expect(r.status).toBe(1)
        expect(String(r.out.error)).toMatch(/is in use \(a file system on it is mounted\)/)
      } finally {
        execFileSync('umount', [mnt])
      }
    } finally {
      spawnSync('losetup', ['-d', dev])
    }
  })

  it('stops at a cut, resumes from what the staging disk holds, and checks the signed digest', async () => {
    const st = join(dir, 'state')
    const first = await tool(args(), st)
    expect(first.status).toBe(1)
    expect(first.out.state).toBe('failed')
    expect(String(first.out.error)).toMatch(/run again to resume/)
    expect(sim.stats()['lab1/1001']!.cuts).toBe(1)
    const afterCut = sim.stats()['lab1/1001']!.bytesDown
    // the link comes back
    sim.setConfig(linkSimConfigFrom({uplink: {ports: {80: {dir: join(dir, 'store')}}}}, 'test'))
    const second = await tool(args(), st)
    expect(second.out.error).toBeNull()
    expect(second.status).toBe(0)
    expect(second.out.state).toBe('done')
    expect(second.out.sha256).toBe(rawSha)
    expect(second.out.runs).toBe(2)
    const total = sim.stats()['lab1/1001']!.bytesDown
    // the rerun fetched what the cut one had not: the random half (3 MB) once, plus a chunk or so
    expect(total - afterCut).toBeLessThan(SIZE / 2 - 1_000_000)
    expect(total).toBeLessThan((SIZE / 2) * 1.2)
    const disk = readFileSync(join(dir, 'target.img')).subarray(0, SIZE)
    expect(createHash('sha256').update(disk).digest('hex')).toBe(rawSha)
    const status = await tool(['status'], st)
    expect(status.out.state).toBe('done')
    expect(status.out.disk_done).toBe(SIZE)
  }, 120_000)

  it('holds --rate-limit-bps on an unshaped link (casync alone lets small chunks burst through)', async () => {
    // a blank staging disk again, and a seed with nothing in common: every chunk is fetched
    writeFileSync(loop, Buffer.alloc(SIZE))
    writeFileSync(join(dir, 'empty-seed'), Buffer.alloc(4096))
    sim.setConfig(linkSimConfigFrom({uplink: {ports: {80: {dir: join(dir, 'store')}}}}, 'test'))
    const before = sim.stats()['lab1/1001']!.bytesDown
    const rate = 1_000_000
    const t0 = performance.now()
    const r = await tool(args({'--seed': join(dir, 'empty-seed'), '--rate-limit-bps': String(rate)}), join(dir, 'state-rate'))
    const secs = (performance.now() - t0) / 1000
    expect(r.out.state).toBe('done')
    const bytes = sim.stats()['lab1/1001']!.bytesDown - before
    expect(bytes).toBeGreaterThan(SIZE * 0.95)
    // the cap is never passed; the start-up (python, the index) makes the measured rate lower, by
    // more on a loaded machine (the suite runs beside emulated VMs): the floor only shows the limiter
    // does not throttle far below its cap. How closely the cap is held is measured by bench/delta.
    expect(bytes / secs).toBeLessThan(rate * 1.1)
    expect(bytes / secs).toBeGreaterThan(rate * 0.5)
  }, 120_000)

  it('--until (the transfer window\'s close): stops cleanly mid-way (exit 3, interrupted), a later run continues to done', async () => {
    writeFileSync(loop, Buffer.alloc(SIZE))
    sim.setConfig(linkSimConfigFrom({uplink: {ports: {80: {dir: join(dir, 'store')}}}}, 'test'))
    const st = join(dir, 'state-until')
    const past = await tool(args({'--seed': join(dir, 'empty-seed'), '--until': String(Math.floor(Date.now() / 1000) - 1)}), st)
    expect(past.status).toBe(3)
    expect(past.out).toMatchObject({state: 'interrupted', fetched_bytes: 0})
    const t0 = performance.now()
    const cut = await tool(args({'--seed': join(dir, 'empty-seed'), '--rate-limit-bps': '1000000', '--until': String(Math.floor(Date.now() / 1000) + 3)}), st)
    // 6 MB at 1 MB/s would take 6 s: stopped at the 3rd second (python's start-up counted)
    expect(cut.status).toBe(3)
    expect(performance.now() - t0).toBeLessThan(5500)
    expect(cut.out.state).toBe('interrupted')
    expect(String(cut.out.error)).toMatch(/transfer window/)
    const rest = await tool(args({'--seed': join(dir, 'empty-seed')}), st)
    expect(rest.status).toBe(0)
    expect(rest.out).toMatchObject({state: 'done', sha256: rawSha, runs: 3})
  }, 120_000)

  it('fails, saying so, when the assembled disk does not match the signed digest', async () => {
    const r = await tool(args({'--raw-sha256': 'f'.repeat(64)}), join(dir, 'state-bad'))
    expect(r.status).toBe(1)
    expect(String(r.out.error)).toMatch(/the signed one is f{64}/)
  }, 120_000)

  it('fails with "store unreachable" when nothing answers at the store URL', async () => {
    const r = await tool(args({'--store': 'http://127.0.0.1:1/'}), join(dir, 'state-unreach'))
    expect(r.status).toBe(1)
    expect(String(r.out.error)).toMatch(/store unreachable/)
  })
})
