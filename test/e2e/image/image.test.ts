import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {run} from '../../../src/exec.js'
import {StderrIo} from '../../../src/io.js'
import {buildImage} from '../../../src/image/build.js'
import {testImage} from '../../../src/image/boottest.js'
import {verifyImage} from '../../../src/image/images.js'

import {cachedPgiImage} from '../../helpers/e2e-image.js'

/**
 * Builds the reference image (once per recipe + lock: cached under the state dir so CI builds
 * once), then boots it: the full `pgi image test` path, and the data-disk rule (a disk that
 * already holds a filesystem is mounted, never reformatted).
 */
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
let root: string
let version: string


describe('pgi-tryton image', () => {
  const tmp: string[] = []
  beforeAll(async () => {
    ;({root, version} = await cachedPgiImage(io))
  })
  afterAll(async () => {
    for (const d of tmp) await rm(d, {recursive: true, force: true})
  })

  it('is signed and verifies, and a published version is never overwritten', async () => {
    const {manifest, diskPath} = await verifyImage(version, {root})
    expect(manifest.packages.find((p) => p.name === 'tryton-server')?.version).toMatch(/^6\.0\./)
    expect(manifest.packages.find((p) => p.name === 'postgresql-15')).toBeDefined()
    expect(manifest.disk.size_bytes).toBeGreaterThan(50e6)
    expect(existsSync(diskPath)).toBe(true)
    await expect(buildImage({recipe: 'pgi-tryton', version, out: root, io})).rejects.toMatchObject({code: 'PGI_IMAGE_EXISTS'})
  })

  it('boots healthy, takes pgi-configure, creates a French-accounting database, logs in over JSON-RPC, survives a reboot', async () => {
    const r = await testImage({version, root, io, healthTimeoutMs: 12 * 60_000})
    expect(r.rebootedHealthy).toBe(true)
    expect(r.modules).toContain('account_fr')
    const db = r.health.databases.find((d) => d.name === 'bts_test')
    expect(db?.modules.account_fr).toMatch(/^6\.0\./)
    expect(r.health.checks.data_disk).toMatchObject({ok: true, mounted: true})
    expect(r.health.image).toEqual({name: 'pgi-tryton', version})
  })

  it('never reformats a data disk that already holds a filesystem (the marker survives)', async () => {
    const d = await mkdtemp(join(tmpdir(), 'pgi-datadisk-'))
    tmp.push(d)
    const disk = join(d, 'data.raw')
    await run('truncate', ['-s', '2G', disk])
    await run('mkfs.ext4', ['-q', '-L', 'olddata', disk])
    const uuidBefore = (await run('blkid', ['-p', '-s', 'UUID', '-o', 'value', disk])).stdout.trim()
    const mnt = join(d, 'mnt')
    await mkdir(mnt)
    const marker = `marker ${Date.now()} ${Math.random()}\n`
    await run('mount', ['-o', 'loop', disk, mnt])
    try {
      await writeFile(join(mnt, 'MARKER.txt'), marker)
    } finally {
      await run('umount', [mnt])
    }
    const r = await testImage({version, root, io, dataDisk: disk, quick: true, healthTimeoutMs: 12 * 60_000})
    expect(r.rebootedHealthy).toBe(true)
    expect(r.health.checks.data_disk).toMatchObject({ok: true, mounted: true})
    // same filesystem (UUID), marker intact, and the PGI layout added beside it
    expect((await run('blkid', ['-p', '-s', 'UUID', '-o', 'value', disk])).stdout.trim()).toBe(uuidBefore)
    await run('mount', ['-o', 'loop,ro', disk, mnt])
    try {
      expect(await readFile(join(mnt, 'MARKER.txt'), 'utf8')).toBe(marker)
      expect(existsSync(join(mnt, 'postgresql', '15', 'main', 'PG_VERSION'))).toBe(true)
      const state = JSON.parse(await readFile(join(mnt, '.pgi', 'state.json'), 'utf8')) as {image: {version: string}}
      expect(state.image.version).toBe(version)
    } finally {
      await run('umount', [mnt])
    }
  })
})
