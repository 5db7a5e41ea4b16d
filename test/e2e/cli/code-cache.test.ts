/**
 * The built CLI runs oclif from dist/cli/oclif.cjs with the V8 code cache `npm run build` writes
 * (scripts/bundle.mjs): the cache is used, and a cache V8 rejects (another Node, a stale file)
 * costs time only. Needs `npm run build` (scripts/install-deps.sh does it in CI).
 */
import {execFile} from 'node:child_process'
import {access, cp, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {pathToFileURL} from 'node:url'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

const root = resolve(import.meta.dirname, '../../..')
const node = promisify(execFile)
let tmp: string

beforeAll(async () => {
  await access(join(root, 'dist', 'cli', 'oclif.cjs')).catch(() => {
    throw new Error('the CLI is not built: run `npm run build` first')
  })
  tmp = await mkdtemp(join(tmpdir(), 'pgi-code-cache-'))
})
afterAll(async () => {
  await rm(tmp, {recursive: true, force: true})
})

/** Loads <cliDir>/oclif.js in a fresh Node, runs `pgi --version` through it, prints the cache state. */
async function versionThrough(cliDir: string): Promise<{stdout: string; stderr: string}> {
  const code = [
    `const oclif = await import(${JSON.stringify(pathToFileURL(join(cliDir, 'oclif.js')).href)})`,
    `await oclif.execute({dir: ${JSON.stringify(pathToFileURL(join(root, 'bin', 'run.js')).href)}, args: ['--version']})`,
    `console.log('code cache: ' + oclif.codeCache)`,
  ].join('\n')
  return node(process.execPath, ['--input-type=module', '-e', code], {cwd: root, env: {...process.env, CI: 'true', OCLIF_DISABLE_ENGINE_WARNING: 'true'}})
}

describe('oclif code cache (built CLI)', () => {
  it('is accepted by this Node, and pgi starts with no warning', async () => {
    const r = await versionThrough(join(root, 'dist', 'cli'))
    expect(r.stdout).toMatch(/^pgi\/\d+\.\d+\.\d+ linux-x64 node-v\d+/)
    expect(r.stdout).toContain('code cache: accepted')
    const cli = await node(process.execPath, [join(root, 'bin', 'run.js'), '--version'], {cwd: root, env: {...process.env, CI: 'true'}})
    expect(cli.stderr).toBe('')
  })

  it('a cache V8 rejects, or none, only makes the start slower', async () => {
    const copy = join(tmp, 'cli')
    await cp(join(root, 'dist', 'cli'), copy, {recursive: true})
    await writeFile(join(copy, 'oclif.cjs.v8-cache'), Buffer.alloc(4096, 7))
    const rejected = await versionThrough(copy)
    expect(rejected.stdout).toMatch(/^pgi\/\d+\.\d+\.\d+ /)
    expect(rejected.stdout).toContain('code cache: rejected')
    await rm(join(copy, 'oclif.cjs.v8-cache'))
    const absent = await versionThrough(copy)
    expect(absent.stdout).toContain('code cache: absent')
  })
})
