/**
 * Runs the CLI as users do: `node bin/run.js …` (the esbuild bundle written by `npm run build`),
 * in its own process, with a bounded time. For tests of behaviour at the command line: parsing,
 * exit codes, the --json envelope, what is printed.
 */
import {spawn} from 'node:child_process'
import {existsSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const CLI = join(ROOT, 'bin', 'run.js')

export interface PgiRun {
  exitCode: number | null
  stdout: string
  stderr: string
  /** stdout parsed, when it is one JSON document (the --json envelope). */
  json?: {status: number; result?: any; error?: {code: string; message: string; suggestions: string[]; where?: Record<string, unknown>; details?: Record<string, unknown>}; warnings?: string[]}
}

/** Fails the test early with what to do when the bundle is missing. */
export function assertBuilt(): void {
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js')) || !existsSync(join(ROOT, 'oclif.manifest.json'))) {
    throw new Error('the CLI is not built: run `npm run build` first (scripts/install-deps.sh does it)')
  }
}

export function runPgi(args: string[], opts: {env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number} = {}): Promise<PgiRun> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [CLI, ...args], {cwd: opts.cwd ?? ROOT, env: {CI: 'true', ...(opts.env ?? process.env)}, stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      rej(new Error(`pgi ${args.join(' ')} did not finish within ${opts.timeoutMs ?? 60_000} ms\n${stderr.slice(-2000)}`))
    }, opts.timeoutMs ?? 60_000)
    child.on('error', rej)
    child.on('close', (code) => {
      clearTimeout(timer)
      let json: PgiRun['json']
      try {
        json = JSON.parse(stdout) as PgiRun['json']
      } catch {
        json = undefined
      }
      res({exitCode: code, stdout, stderr, ...(json ? {json} : {})})
    })
  })
}
