import {execFile} from 'node:child_process'
import {mkdir, mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {ImageManifest} from '../../../src/image/manifest.js'

import {compare, snapshot, type Snapshot} from './host-snapshot.js'

/**
 * `pgi image build` through the bundled CLI, as a user runs it. The small recipe, lab-test, twice:
 *
 * - the first build changes nothing on the host outside pgi's own folders: apt's package lists
 *   and cache and the system logs are compared before and after (a build used to empty
 *   /var/lib/apt/lists: mmdebstrap's final `apt-get update` ran with the host's configuration
 *   once the customize hook had deleted mmdebstrap's apt configuration file from the rootfs' /tmp);
 * - the two builds, from the same recipe, lock and SOURCE_DATE_EPOCH into two folders, give the
 *   same bytes: the same raw disk and the same qcow2 sha256.
 *
 * Needs root (like `pgi image build`) and `npm run build`. Takes two lab-test builds (about two
 * minutes each with a warm apt cache on the shared 2-core machine, docs/performance.md).
 *
 * PGI_E2E_REPRO_TRYTON=1 also builds pgi-tryton twice and compares the bytes (two builds of 3–6
 * minutes with warm apt and build caches), and pgi-tryton@2 (the 2.x line) with PGI_E2E_IMAGE2=1
 * too; PGI_E2E_REPRO_OUT=DIR keeps those two images in
 * DIR/a and DIR/b (e.g. for PGI_E2E_IMAGES_DIR=DIR/a npx vitest run test/e2e/image/image.test.ts).
 */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')
const EPOCH = '1767225600'

/**
 * What the build must not touch. Files under /var/log may have grown by an append (the earlier
 * bytes unchanged) while the build ran: other processes log there. apt's and dpkg's own logs may
 * not change at all, since a misdirected apt or dpkg run is what would write them (another
 * `apt-get install` on the machine during the build would fail this test too: run it again).
 */
const WATCHED = [{path: '/var/lib/apt/lists'}, {path: '/var/cache/apt'}, {path: '/var/log', hash: true}]
const APPEND_ONLY = ['/var/log']
const STRICT = ['/var/log/apt', '/var/log/dpkg.log', '/var/log/alternatives.log']

interface Built {
  out: string
  manifest: ImageManifest
  seconds: number
}

const dirs: string[] = []
afterAll(async () => {
  for (const d of dirs) await rm(d, {recursive: true, force: true})
})

async function build(recipe: string, label: string, secrets: string, keepIn?: string): Promise<Built> {
  let out: string
  if (keepIn) {
    out = join(keepIn, label)
    await mkdir(out, {recursive: true})
  } else {
    out = await mkdtemp(join(tmpdir(), `pgi-e2e-${recipe}-${label}-`))
    dirs.push(out)
  }
  const t0 = Date.now()
  const stdout = await new Promise<string>((ok, fail) => {
    execFile(
      process.execPath,
      [CLI, 'image', 'build', recipe, '--out', out, '--secrets-dir', secrets, '--allow-lock-drift', '--json'],
      {env: {...process.env, CI: 'true', SOURCE_DATE_EPOCH: EPOCH}, timeout: 30 * 60_000, maxBuffer: 64 * 1024 * 1024},
      (err, so, se) => (err ? fail(new Error(`pgi image build ${recipe} (${label}) failed: ${err.message}\n${String(se).slice(-4000)}\n${String(so).slice(-2000)}`)) : ok(String(so))),
    )
  })
  const seconds = (Date.now() - t0) / 1000
  const envelope = JSON.parse(stdout) as {status: number; result: {manifest: string}}
  expect(envelope.status).toBe(0)
  const manifest = JSON.parse(await readFile(envelope.result.manifest, 'utf8')) as ImageManifest
  process.stderr.write(`${recipe} build ${label}: ${seconds.toFixed(1)} s, qcow2 ${manifest.disk.sha256.slice(0, 16)}, raw ${manifest.disk.raw_sha256.slice(0, 16)}\n`)
  return {out, manifest, seconds}
}

describe('pgi image build lab-test', () => {
  let before: Snapshot
  let after: Snapshot
  let a: Built
  let secrets: string

  beforeAll(async () => {
    secrets = await mkdtemp(join(tmpdir(), 'pgi-e2e-labtest-secrets-'))
    dirs.push(secrets)
    before = await snapshot(WATCHED)
    a = await build('lab-test', 'a', secrets)
    after = await snapshot(WATCHED)
  })

  it('leaves the host\'s apt package lists, apt cache and logs as they were', async () => {
    // the check can only fail if there is something to lose: the host has package lists
    const lists = [...before.keys()].filter((p) => /^\/var\/lib\/apt\/lists\/[^/]+_(InRelease|Release|Packages[^/]*)$/.test(p))
    expect(lists.length, 'no package lists on this host to watch: run `apt-get update` first').toBeGreaterThan(0)
    const r = await compare(before, after, {appendOnly: APPEND_ONLY, strict: STRICT})
    for (const l of r.appended) process.stderr.write(`appended to by another process during the build (allowed): ${l}\n`)
    expect(r.differences).toEqual([])
  })

  it('gives the same bytes when built again from the same recipe, lock and SOURCE_DATE_EPOCH', async () => {
    const b = await build('lab-test', 'b', secrets)
    expect(b.manifest.tree.digest).toBe(a.manifest.tree.digest)
    expect(b.manifest.disk.raw_sha256).toBe(a.manifest.disk.raw_sha256)
    expect(b.manifest.disk.sha256).toBe(a.manifest.disk.sha256)
    expect(b.manifest.disk.size_bytes).toBe(a.manifest.disk.size_bytes)
  })
})

// line 1 with PGI_E2E_REPRO_TRYTON=1; line 2 (Debian 13, built by this Debian 12 host's tools) when
// PGI_E2E_IMAGE2=1 too
for (const [ref, run] of [['pgi-tryton', Boolean(process.env.PGI_E2E_REPRO_TRYTON)], ['pgi-tryton@2', Boolean(process.env.PGI_E2E_REPRO_TRYTON) && process.env.PGI_E2E_IMAGE2 === '1']] as const) {
  describe.skipIf(!run)(`pgi image build ${ref} (PGI_E2E_REPRO_TRYTON=1${ref.includes('@') ? ', PGI_E2E_IMAGE2=1' : ''})`, () => {
    it('gives the same bytes when built again from the same recipe, lock and SOURCE_DATE_EPOCH', async () => {
      const secrets = await mkdtemp(join(tmpdir(), 'pgi-e2e-tryton-secrets-'))
      dirs.push(secrets)
      const keep = process.env.PGI_E2E_REPRO_OUT ? resolve(process.env.PGI_E2E_REPRO_OUT) : undefined
      const a = await build(ref, 'a', secrets, keep)
      const b = await build(ref, 'b', secrets, keep)
      expect(b.manifest.tree.digest).toBe(a.manifest.tree.digest)
      expect(b.manifest.disk.raw_sha256).toBe(a.manifest.disk.raw_sha256)
      expect(b.manifest.disk.sha256).toBe(a.manifest.disk.sha256)
    })
  })
}
