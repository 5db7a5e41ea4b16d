/**
 * Runs the CLI as users do: `node bin/run.js …` (the esbuild bundle written by `npm run build`),
 * in its own process, with a bounded time. For tests of behaviour at the command line: parsing,
 * exit codes, the --json envelope, what is printed.
 */
import {spawn} from 'node:child_process'
import {existsSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {format} from 'node:util'

import type {Config} from '@oclif/core'

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

/** An oclif command class, as the tests that run one in-process hold it. */
export interface CommandClass {
  run(argv: string[], config: Config): Promise<unknown>
}

/** What an in-process command printed and its exit code. */
export interface CommandRun {
  stdout: string
  stderr: string
  exitCode: number
}

/**
 * Runs one command in this process (for tests that need the engine's state at hand: a lab, a
 * store): stdout and stderr captured (oclif prints results with console.log / console.error too),
 * `env` set for the run only, the exit code read from process.exitCode (a thrown error: its oclif
 * exit code, or 1). The one in-process harness: tests of what users run use runPgi above.
 */
export async function runCommand(cmd: CommandClass, argv: string[], config: Config, env: Record<string, string> = {}): Promise<CommandRun> {
  let stdout = ''
  let stderr = ''
  const ow = process.stdout.write.bind(process.stdout)
  const ew = process.stderr.write.bind(process.stderr)
  const {log, error} = console
  const saved = {...process.env}
  Object.assign(process.env, env)
  process.stdout.write = ((c: string | Uint8Array) => ((stdout += String(c)), true)) as typeof process.stdout.write
  process.stderr.write = ((c: string | Uint8Array) => ((stderr += String(c)), true)) as typeof process.stderr.write
  console.log = (...a: unknown[]) => void (stdout += format(...a) + '\n')
  console.error = (...a: unknown[]) => void (stderr += format(...a) + '\n')
  try {
    await cmd.run(argv, config)
  } catch (err) {
    stderr += `[thrown] ${(err as Error).message}\n`
    if (process.exitCode === undefined) process.exitCode = (err as {oclif?: {exit?: number}}).oclif?.exit ?? 1
  } finally {
    process.stdout.write = ow
    process.stderr.write = ew
    console.log = log
    console.error = error
    process.env = saved
  }
  const exitCode = Number(process.exitCode ?? 0)
  process.exitCode = undefined
  return {stdout, stderr, exitCode}
}
