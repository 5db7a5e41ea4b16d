import {spawn} from 'node:child_process'
import {closeSync, openSync} from 'node:fs'

import {execa, type Options as ExecaOptions} from 'execa'

import {ErrorCode, UserError} from './errors.js'
import {ExitCode} from './exit-codes.js'
import type {Io} from './io.js'

/**
 * The only module that runs local programs (through execa). Arguments never hold secrets:
 * pass those on stdin (`input`) or in a file readable by the owner only.
 */

/** Debian package that provides each tool pgi runs, for "install X" suggestions. */
export const TOOL_PACKAGES: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  mmdebstrap: 'mmdebstrap',
  extlinux: 'extlinux',
  'mkfs.ext4': 'e2fsprogs',
  'mkfs.vfat': 'dosfstools',
  losetup: 'mount',
  mount: 'mount',
  sfdisk: 'fdisk',
  zstd: 'zstd',
  casync: 'casync',
  restic: 'restic',
  age: 'age',
  'age-keygen': 'age',
  ssh: 'openssh-client',
  'ssh-keygen': 'openssh-client',
  sshd: 'openssh-server',
  openssl: 'openssl',
  genisoimage: 'genisoimage',
  xorriso: 'xorriso',
  'cloud-localds': 'cloud-image-utils',
  ip: 'iproute2',
  mcopy: 'mtools',
  'mkfs.fat': 'dosfstools',
  socat: 'socat',
}

export interface RunOptions {
  cwd?: string
  env?: Record<string, string | undefined>
  /** Data for stdin (this is how secrets reach a program). */
  input?: string | Buffer
  timeoutMs?: number
  /** Do not throw on a non-zero exit; the caller reads exitCode. */
  allowFailure?: boolean
  /** Stream each output line to this callback (progress). */
  onLine?: (line: string) => void
  signal?: AbortSignal
  /** After SIGTERM (timeout or signal), how long the program may clean up before SIGKILL (default 5 s). */
  killGraceMs?: number
  /**
   * Run in its own process group and, on `signal`, send SIGTERM (then SIGKILL after killGraceMs)
   * to the whole group: for tools whose children outlive them (mmdebstrap waits for apt/dpkg and
   * keeps the output pipes open, so stopping only the top process stops nothing).
   */
  processGroup?: boolean
}

function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (!pid) return
  try {
    process.kill(-pid, sig)
  } catch {
    // the group is already gone
  }
}

export interface RunResult {
  command: string
  exitCode: number
  stdout: string
  stderr: string
}

function missingTool(tool: string): UserError {
  const pkg = TOOL_PACKAGES[tool]
  return new UserError(ErrorCode.TOOL_MISSING, `required tool "${tool}" is not installed`, {
    suggestions: [pkg ? `Install it: apt-get install ${pkg}` : `Install the program that provides "${tool}".`],
  })
}

/** Runs `file args…` and returns its output; throws a UserError with the stderr tail on failure. */
export async function run(file: string, args: readonly string[], opts: RunOptions = {}, io?: Io): Promise<RunResult> {
  const command = [file, ...args].join(' ')
  io?.debug(`run: ${command}`)
  const options: ExecaOptions = {
    cwd: opts.cwd,
    env: opts.env,
    extendEnv: true,
    input: opts.input,
    timeout: opts.timeoutMs,
    reject: false,
    stripFinalNewline: true,
    ...(opts.processGroup ? {detached: true} : {cancelSignal: opts.signal}),
    ...(opts.killGraceMs !== undefined ? {forceKillAfterDelay: opts.killGraceMs} : {}),
    ...(opts.input === undefined ? {stdin: 'ignore' as const} : {}),
  }
  const child = execa(file, args, options)
  let groupKilled = false
  const onAbort = () => {
    groupKilled = true
    killGroup(child.pid, 'SIGTERM')
    setTimeout(() => killGroup(child.pid, 'SIGKILL'), opts.killGraceMs ?? 5000).unref()
  }
  if (opts.processGroup && opts.signal) {
    if (opts.signal.aborted) onAbort()
    else opts.signal.addEventListener('abort', onAbort, {once: true})
  }
  if (opts.onLine) {
    const feed = (chunk: Buffer | string) => {
      for (const line of chunk.toString().split('\n')) if (line.trim()) opts.onLine?.(line)
    }
    child.stdout?.on('data', feed)
    child.stderr?.on('data', feed)
  }
  const r = await child
  opts.signal?.removeEventListener('abort', onAbort)
  if (groupKilled) {
    throw new UserError(ErrorCode.INTERRUPTED, `"${file}" was interrupted`, {exitCode: ExitCode.INTERRUPTED})
  }
  if ((r as {code?: string}).code === 'ENOENT' || (r.failed && /ENOENT/.test(String(r.message)) && r.exitCode === undefined)) {
    throw missingTool(file)
  }
  const result: RunResult = {
    command,
    exitCode: r.exitCode ?? (r.timedOut ? 124 : 1),
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr ?? ''),
  }
  if (r.isCanceled) {
    throw new UserError(ErrorCode.INTERRUPTED, `"${file}" was interrupted`, {exitCode: ExitCode.INTERRUPTED})
  }
  if (r.timedOut) {
    throw new UserError(ErrorCode.TOOL_FAILED, `"${command}" did not finish within ${opts.timeoutMs} ms`, {
      details: {stderrTail: tail(result.stderr)},
    })
  }
  if (result.exitCode !== 0 && !opts.allowFailure) {
    throw new UserError(ErrorCode.TOOL_FAILED, `"${command}" failed with exit code ${result.exitCode}: ${tail(result.stderr || result.stdout, 5)}`, {
      details: {exitCode: result.exitCode},
    })
  }
  return result
}

/** Starts a long-running program in the background (QEMU, a lab daemon) and returns its handle. */
export function spawnDetached(file: string, args: readonly string[], opts: {cwd?: string; env?: Record<string, string | undefined>; logFile: string}): {pid: number | undefined} {
  // node:child_process rather than execa here: the log file must be handed to the child as a
  // plain file descriptor. execa's `{file}` target pipes the output through this process, which
  // then cannot exit before the child (`pgi lab start` hung) and the child gets SIGPIPE when this
  // process ends; execa's types do not take an arbitrary descriptor.
  const fd = openSync(opts.logFile, 'a')
  try {
    const child = spawn(file, [...args], {
      cwd: opts.cwd,
      env: Object.fromEntries(Object.entries({...process.env, ...opts.env}).filter(([, v]) => v !== undefined)) as NodeJS.ProcessEnv,
      detached: true,
      stdio: ['ignore', fd, fd],
    })
    // A missing program is reported asynchronously: the caller sees no pid and checks the log.
    child.on('error', () => undefined)
    child.unref()
    return {pid: child.pid}
  } finally {
    closeSync(fd)
  }
}

/** Is `tool` on the PATH? */
export async function hasTool(tool: string): Promise<boolean> {
  const r = await execa('sh', ['-c', `command -v "$1"`, 'sh', tool], {reject: false})
  return r.exitCode === 0
}

/** Throws TOOL_MISSING for the first of `tools` that is not installed, naming its Debian package. */
export async function requireTools(tools: readonly string[]): Promise<void> {
  for (const t of tools) if (!(await hasTool(t))) throw missingTool(t)
}

function tail(text: string, lines = 20): string {
  return text.split('\n').slice(-lines).join('\n').trim()
}
