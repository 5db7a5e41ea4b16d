/**
 * Running the bundled CLI (`bin/run.js`, what users run) against `pgi lab --backend simulated`:
 * each run measured (when it printed last, when it exited), small signed images to deploy, and a
 * client of the lab for what no pgi command does (a teacher's database in a guest).
 */
import {execFileSync, spawn} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {existsSync, readdirSync, statSync} from 'node:fs'
import {mkdir, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {exportTrustedKey, generateSigningKey, keyId, manifestBytes, publicKeyOf, signBytes, type ImageManifest} from '../../../src/image/manifest.js'

export const ROOT = resolve(import.meta.dirname, '..', '..', '..')
export const CLI = join(ROOT, 'bin', 'run.js')

function newest(dir: string): number {
  let t = 0
  for (const e of readdirSync(dir, {withFileTypes: true})) {
    const p = join(dir, e.name)
    t = Math.max(t, e.isDirectory() ? newest(p) : e.name.endsWith('.ts') ? statSync(p).mtimeMs : 0)
  }
  return t
}

/** Builds dist/ when the bundle is missing or older than the sources (CI runs on a fresh clone). */
export function ensureBuilt(): void {
  const bundle = join(ROOT, 'dist', 'cli', 'commands.js')
  const daemon = join(ROOT, 'dist', 'src', 'lab', 'daemon.js')
  const src = Math.max(newest(join(ROOT, 'src')), newest(join(ROOT, 'commands')))
  if (existsSync(bundle) && existsSync(daemon) && Math.min(statSync(bundle).mtimeMs, statSync(daemon).mtimeMs) >= src) return
  execFileSync('npm', ['run', 'build'], {cwd: ROOT, stdio: 'inherit', timeout: 10 * 60_000})
}

export interface CliRun {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** From start to exit (ms). */
  ms: number
  /** From the last byte written on stdout or stderr to the exit (ms). */
  afterLastOutputMs: number
  /** Parsed stdout when --json was given. */
  json?: {status: number; result?: any; error?: any}
}

/**
 * Runs `pgi ARGS` and measures it; kills it (SIGKILL) after `killAfterMs`, so a hang fails the
 * test instead of holding it.
 */
export function runPgi(args: string[], env: NodeJS.ProcessEnv, opts: {killAfterMs?: number; cwd?: string} = {}): Promise<CliRun> {
  return new Promise((done, fail) => {
    const t0 = performance.now()
    let last = t0
    let stdout = ''
    let stderr = ''
    const child = spawn(process.execPath, [CLI, ...args], {env, cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'pipe', 'pipe']})
    child.stdout.on('data', (c: Buffer) => {
      last = performance.now()
      stdout += c.toString()
    })
    child.stderr.on('data', (c: Buffer) => {
      last = performance.now()
      stderr += c.toString()
    })
    const killer = setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs ?? 120_000)
    let exitAt = 0
    let exit: {code: number | null; signal: NodeJS.Signals | null} = {code: null, signal: null}
    child.on('exit', (code, signal) => {
      exitAt = performance.now()
      exit = {code, signal}
    })
    child.on('error', fail)
    child.on('close', () => {
      clearTimeout(killer)
      let json: CliRun['json']
      if (args.includes('--json')) {
        try {
          json = JSON.parse(stdout) as CliRun['json']
        } catch {
          json = undefined
        }
      }
      done({...exit, stdout, stderr, ms: Math.round(exitAt - t0), afterLastOutputMs: Math.max(0, Math.round(exitAt - last)), json})
    })
  })
}

/** A description of a run for assertion messages. */
export function describeRun(args: string[], r: CliRun): string {
  return `pgi ${args.join(' ')} → exit ${r.code ?? r.signal} after ${r.ms} ms (${r.afterLastOutputMs} ms after its last output)\n${r.stderr.slice(-1500)}\n${r.stdout.slice(-1500)}`
}

/**
 * Signed pgi-tryton images (a few hundred KiB of random bytes each) in `root`, with their key in
 * `root/trusted-keys`: what `pgi deploy` and `pgi rollout` verify and upload.
 */
export async function makeImages(root: string, versions: string[]): Promise<void> {
  const key = generateSigningKey()
  const pub = publicKeyOf(key)
  await exportTrustedKey(root, pub)
  for (const version of versions) {
    const dir = join(root, 'pgi-tryton', version)
    await mkdir(dir, {recursive: true})
    const bytes = randomBytes(256 * 1024)
    const file = `pgi-tryton-${version}.qcow2`
    await writeFile(join(dir, file), bytes)
    const m: ImageManifest = {
      format: 1,
      name: 'pgi-tryton',
      version,
      build_time: '2026-01-01T00:00:00Z',
      source_date_epoch: 1767225600,
      disk: {file, format: 'qcow2', sha256: createHash('sha256').update(bytes).digest('hex'), size_bytes: bytes.length, virtual_size_bytes: 2 ** 31, raw_sha256: '0'.repeat(64)},
      kernel: {package: 'linux-image-cloud-amd64', release: '6.1.0-test', version: 'test'},
      recipe: {name: 'pgi-tryton', digest: 'test'},
      lock: {digest: 'test', packages: 0},
      tree: {digest: 'test', entries: 0},
      packages: [],
      ports: {ssh: 22, web: 80, jsonrpc: 8000, postgresql: 5432},
      signing: {algorithm: 'ed25519', key_id: keyId(pub)},
    }
    const mb = manifestBytes(m)
    await writeFile(join(dir, 'manifest.json'), mb)
    await writeFile(join(dir, 'manifest.sig'), signBytes(mb, key))
  }
}
