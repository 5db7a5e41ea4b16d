/**
 * `npm run bench` → bench/run-all.js: every benchmark of the folder in turn, one JSON line each
 * (the benchmark's last line as `result`), a summary JSON line last. Checked on a folder of small
 * stand-in benchmarks (the real ones take minutes to hours), and on the real folder's list.
 */
import {execFile} from 'node:child_process'
import {existsSync, readdirSync} from 'node:fs'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

const root = resolve(import.meta.dirname, '../../..')
const runAll = join(root, 'bench', 'run-all.js')
const run = (args: string[]) =>
  promisify(execFile)(process.execPath, [runAll, ...args], {cwd: root}).then(
    (r) => ({code: 0, ...r}),
    (e: {code: number; stdout: string; stderr: string}) => ({code: e.code, stdout: e.stdout, stderr: e.stderr}),
  )

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgi-run-all-'))
  await writeFile(join(dir, 'alpha.mjs'), `console.log('warming up'); console.log(JSON.stringify({bench: 'alpha', ms: 12, ok: true}))\n`)
  await writeFile(join(dir, 'beta.mjs'), `console.log(JSON.stringify({bench: 'beta', ms: 99, ok: false}))\n`)
  await writeFile(join(dir, 'gamma.mjs'), `console.error('boom'); process.exit(3)\n`)
  await writeFile(join(dir, 'notes.txt'), 'not a benchmark\n')
})
afterAll(async () => {
  await rm(dir, {recursive: true, force: true})
})

describe('bench/run-all.js', () => {
  it('is what `npm run bench` runs (after a build)', async () => {
    const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as {scripts: Record<string, string>}
    expect(pkg.scripts.bench).toBe('npm run build && node bench/run-all.js')
    expect(existsSync(runAll)).toBe(true)
  })

  it('runs each benchmark in turn: one JSON line each, the summary last; exit 1 when one failed', async () => {
    const r = await run(['--dir', dir])
    expect(r.code).toBe(1)
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(lines.map((l) => l.bench)).toEqual(['alpha', 'beta', 'gamma', 'all'])
    expect(lines[0]).toMatchObject({bench: 'alpha', ok: true, exitCode: 0, result: {bench: 'alpha', ms: 12, ok: true}})
    expect(lines[1]).toMatchObject({bench: 'beta', ok: false, exitCode: 0, result: {ms: 99}})
    expect(lines[2]).toMatchObject({bench: 'gamma', ok: false, exitCode: 3, error: 'no JSON object on its last lines'})
    expect(lines[3]).toMatchObject({bench: 'all', ran: 3, ok: 1, failed: 2, skipped: 0, failedBenches: ['beta', 'gamma']})
    // the benchmarks' own output goes to stderr
    expect(r.stderr).toContain('warming up')
    expect(r.stderr).toContain('boom')
  })

  it('--only / --skip choose; an unknown name is a usage error', async () => {
    const only = await run(['--dir', dir, '--only', 'alpha'])
    expect(only.code).toBe(0)
    expect(only.stdout.trim().split('\n').map((l) => (JSON.parse(l) as {bench: string}).bench)).toEqual(['alpha', 'all'])
    const skip = await run(['--dir', dir, '--skip', 'beta,gamma', '--list'])
    expect(skip.stdout.trim().split('\n')).toEqual(['alpha'])
    const bad = await run(['--dir', dir, '--only', 'delta'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('no benchmark named delta')
  })

  it('lists every benchmark of bench/', async () => {
    const r = await run(['--list'])
    expect(r.code).toBe(0)
    const want = readdirSync(join(root, 'bench')).filter((f) => f.endsWith('.mjs')).map((f) => f.replace(/\.mjs$/, '')).sort()
    expect(r.stdout.trim().split('\n')).toEqual(want)
    expect(want).toEqual(expect.arrayContaining(['deploy', 'image', 'lab-scale', 'rollout', 'secrets', 'startup', 'status']))
  })
})
