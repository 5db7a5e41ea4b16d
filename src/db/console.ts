/**
 * `pgi db teacher …` and `pgi db audit` as a library: the teachers' console's accounts and audit
 * log, through the VM's guest agent and the console's own command line, `pgi-console`
 * (images/pgi-tryton/files/usr/local/lib/pgi/console/cli.py, docs/console.md "Command line"). The
 * console keeps its store in the VM (SQLite on the data disk); the host keeps nothing of it.
 *
 * The one secret here is a teacher's one-time activation code (`teacher add`, `teacher reset`):
 * the console keeps only a keyed hash of it, so the host's answer is the only copy. It is for the
 * teacher, through the AMI who asked: it is never logged, never in an error, and reaches the
 * command only as a Secret (src/secret.ts); the command decides where it goes (the terminal, a
 * file encrypted to the AMI, or --json when asked: commands/db/teacher/add.ts).
 */
import {armor, Encrypter} from 'age-encryption'
import {join, resolve} from 'node:path'

import {ErrorCode, UserError, type ErrorCodeValue} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {guestWhere, type GuestTarget} from '../fleet/guest.js'
import type {Establishment} from '../inventory/types.js'
import {Secret} from '../secret.js'
import {writeFileAtomic} from '../secrets/atomic.js'
import {teacherEmailProblem, teacherNameProblem, TEACHER_EMAIL_RE} from './names.js'
import {checkPasswordsTarget} from './passwords.js'
import type {DbContext} from './service.js'

export {teacherEmailProblem, teacherNameProblem, TEACHER_EMAIL_RE}

export const GUEST_CONSOLE = '/usr/local/sbin/pgi-console'

/** The teachers' page where a code is used, under the console's address (console/web.py `activate`). */
export const SETUP_PAGE = 'activer'

/** pgi-console's exit statuses (cli.py docstring) → pgi's error code, exit code and what to do next. */
const STATUS: Record<number, {code: ErrorCodeValue; exit: ExitCodeValue; next: string}> = {
  3: {code: ErrorCode.CONSOLE_INVALID, exit: ExitCode.INVALID_INPUT, next: 'Fix the value named in the message; nothing was changed.'},
  4: {code: ErrorCode.TEACHER_NOT_FOUND, exit: ExitCode.INVALID_INPUT, next: 'List the accounts with `pgi db teacher list UAI` and use one of their e-mail addresses.'},
  5: {code: ErrorCode.TEACHER_EXISTS, exit: ExitCode.REFUSED, next: 'That teacher already has an account: `pgi db teacher reset UAI EMAIL` issues a new code.'},
}


/**
 * Runs `pgi-console ARGS…` in the VM and returns its JSON answer; its refusals become typed errors
 * with their exit codes. A VM whose image has no console (before the console was in the image)
 * answers 127: said so, with what to do.
 */
export async function runPgiConsole<T>(t: GuestTarget, args: string[], opts: {idempotent?: boolean; timeoutMs?: number} = {}): Promise<T> {
  const r = await t.api.agentExec(t.node, t.vmid, [GUEST_CONSOLE, ...args], {timeoutMs: opts.timeoutMs ?? 120_000, idempotent: opts.idempotent ?? false, pollMaxMs: 1000})
  let out: unknown
  try {
    out = JSON.parse(r.stdout.trim().split('\n').slice(-1)[0] ?? '')
  } catch {
    out = undefined
  }
  const failure = (out as {error?: {code?: string; message?: string}} | null | undefined)?.error
  if (r.exitcode === 0 && out !== undefined && !failure) return out as T
  const what = `pgi-console ${args.slice(0, args[0] === 'teacher' ? 2 : 1).join(' ')}`
  // never the raw output: `teacher add` prints the code on stdout, and a failure must not echo it
  const message = failure?.message ?? ((r.stderr || '').trim().split('\n').slice(-2).join(' | ').slice(0, 300) || '(no output)')
  if (r.exitcode === 127 || /No such file or directory|command not found/.test(r.stderr ?? '') && out === undefined) {
    throw new UserError(ErrorCode.CONSOLE_FAILED, `the VM ${t.vmid} has no teachers' console (${GUEST_CONSOLE} is missing): its image predates it`, {
      where: guestWhere(t),
      suggestions: ['Roll out an image with the console (pgi-tryton 1.0.0 of the current recipe or newer): `pgi rollout`.'],
    })
  }
  const s = STATUS[r.exitcode]
  if (s) {
    throw new UserError(s.code, `${what} refused in VM ${t.vmid}: ${message}`, {
      exitCode: s.exit,
      where: guestWhere(t),
      suggestions: [s.next],
      details: {guest: {code: failure?.code ?? null, message}},
    })
  }
  throw new UserError(ErrorCode.CONSOLE_FAILED, `${what} failed in VM ${t.vmid} (exit ${r.exitcode}): ${message}`, {
    where: guestWhere(t),
    suggestions: ["Look at the console's journal in the VM (journalctl -u pgi-console -t pgi-console), then retry; `pgi status UAI` shows the console's health."],
    ...(failure ? {details: {guest: {code: failure.code ?? null, message}}} : {}),
  })
}

/** A teacher's account as pgi-console prints it (console/accounts.py `public`: never a hash). */
export interface TeacherAccount {
  id: number
  email: string
  name: string
  tryton_login: string
  /** pending (no password yet), active, disabled. */
  status: string
  created_at: string
  created_by: string
  password_set_at: string | null
  last_login: string | null
  setup_code_expires: string | null
}

/** The answer of `teacher add` and `teacher reset`: the code is a Secret until the command places it. */
export interface TeacherCodeResult {
  uai: string
  teacher: TeacherAccount
  /** The one-time code (ABCD-EFGH-JKLM), the only copy: the console keeps a keyed hash. */
  setupCode: Secret
  /** Where the teacher uses it (the VM's address; the lab's forward when the AMI reaches it otherwise). */
  setupUrl: string
  expires: string | null
}

async function target(ctx: DbContext, uai: string): Promise<{est: Establishment; t: GuestTarget}> {
  const est = await ctx.fleet.establishment(uai)
  return {est, t: await ctx.fleet.guest(est)}
}

/** The console's address on the VM's own address: `https://ADDRESS/console/`. */
export function consoleUrl(est: Establishment): string {
  const address = est.network.address.split('/')[0]!
  return `https://${address.includes(':') ? `[${address}]` : address}/console/`
}

/**
 * The page where the teacher uses the code, its e-mail filled in: `https://ADDRESS/console/activer?email=…`
 * (never the code: URLs end up in browser histories and server logs). `base` is the console's
 * address when the AMI reaches it otherwise (a NAT, a lab's port forward).
 */
export function setupUrl(est: Establishment, email: string, base?: string): string {
  const root = (base ?? consoleUrl(est)).replace(/\/+$/, '')
  return `${root}/${SETUP_PAGE}?email=${encodeURIComponent(email)}`
}

function withCode(uai: string, est: Establishment, r: {teacher: TeacherAccount; setup_code: string}, base?: string): TeacherCodeResult {
  if (typeof r.setup_code !== 'string' || !/^[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}$/.test(r.setup_code)) {
    throw new UserError(ErrorCode.CONSOLE_FAILED, `pgi-console answered without a one-time code for ${r.teacher?.email ?? '?'}`, {suggestions: ['`pgi db teacher reset UAI EMAIL` issues a new one.']})
  }
  return {uai, teacher: r.teacher, setupCode: new Secret(r.setup_code), setupUrl: setupUrl(est, r.teacher.email, base), expires: r.teacher.setup_code_expires}
}

/** Before the VM is asked: a code bound for a file needs the AMI's key and a folder that can be written. */
async function checkPlacement(est: Establishment, placement: CodePlacement | undefined): Promise<void> {
  if (placement?.kind === 'file') await checkPasswordsTarget(est, placement.outDir, CODE_FILE_WHAT)
}

export async function addTeacher(ctx: DbContext, uai: string, o: {name: string; email: string; consoleUrl?: string; placement?: CodePlacement}): Promise<TeacherCodeResult> {
  const est = await ctx.fleet.establishment(uai)
  await checkPlacement(est, o.placement)
  const t = await ctx.fleet.guest(est)
  ctx.io.info(`${uai}: adding the teacher ${o.email} to the console`)
  const r = await runPgiConsole<{teacher: TeacherAccount; setup_code: string}>(t, ['teacher', 'add', '--name', o.name.trim(), '--email', o.email.trim().toLowerCase()])
  return withCode(uai, est, r, o.consoleUrl)
}

export async function resetTeacher(ctx: DbContext, uai: string, email: string, o: {consoleUrl?: string; placement?: CodePlacement} = {}): Promise<TeacherCodeResult> {
  const est = await ctx.fleet.establishment(uai)
  await checkPlacement(est, o.placement)
  const t = await ctx.fleet.guest(est)
  ctx.io.info(`${uai}: resetting the password of ${email} (a new one-time code; their sessions end)`)
  const r = await runPgiConsole<{teacher: TeacherAccount; setup_code: string}>(t, ['teacher', 'reset', email.trim().toLowerCase()])
  return withCode(uai, est, r, o.consoleUrl)
}

export async function listTeachers(ctx: DbContext, uai: string): Promise<{uai: string; teachers: TeacherAccount[]}> {
  const {t} = await target(ctx, uai)
  return {uai, teachers: await runPgiConsole<TeacherAccount[]>(t, ['teacher', 'list'], {idempotent: true})}
}

export async function setTeacherEnabled(ctx: DbContext, uai: string, email: string, enabled: boolean): Promise<{uai: string; teacher: TeacherAccount}> {
  const {t} = await target(ctx, uai)
  ctx.io.info(`${uai}: ${enabled ? 'enabling' : 'disabling'} ${email}${enabled ? '' : ' (their sessions end)'}`)
  const r = await runPgiConsole<{teacher: TeacherAccount}>(t, ['teacher', enabled ? 'enable' : 'disable', email.trim().toLowerCase()])
  return {uai, teacher: r.teacher}
}

/** One line of the console's audit log (console/store.py `audit`). */
export interface AuditEntry {
  id: number
  /** UTC, YYYY-MM-DDTHH:MM:SSZ. */
  at: string
  /** A teacher's e-mail, ami:LOGIN, cli:root, or anonyme. */
  actor: string
  role: string
  action: string
  target: string | null
  /** ok, en file, échec, refusé. */
  result: string
  detail: string | null
  ip: string | null
}

export interface AuditOptions {
  /** UTC, YYYY-MM-DDTHH:MM:SSZ (src/cli/db.ts sinceFlag normalises what people type). */
  since?: string
  limit?: number
  actor?: string
}

/** The console's audit log, newest first. */
export async function readAudit(ctx: DbContext, uai: string, o: AuditOptions = {}): Promise<{uai: string; since: string | null; entries: AuditEntry[]}> {
  const {t} = await target(ctx, uai)
  const args = ['audit', '--limit', String(o.limit ?? 200)]
  if (o.since) args.push('--since', o.since)
  if (o.actor) args.push('--actor', o.actor)
  return {uai, since: o.since ?? null, entries: await runPgiConsole<AuditEntry[]>(t, args, {idempotent: true})}
}

/**
 * Writes a one-time code into a file encrypted to the establishment's AMI (inventory
 * `ami.age_recipient`, as the handoff and the class passwords are): `<UAI>-<email>-<stamp>.teacher.age`
 * in `outDir`, mode 0600. For runs without a terminal (scripts, CI), where printing the code would
 * put it in a log. Returns the path.
 */
export async function writeTeacherCode(est: Establishment, outDir: string, r: TeacherCodeResult, now = new Date()): Promise<string> {
  const recipient = await checkPasswordsTarget(est, outDir, CODE_FILE_WHAT)
  const at = now.toISOString().replace(/\.\d{3}Z$/, 'Z')
  const safe = r.teacher.email.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-+|-+$/g, '').toLowerCase().slice(0, 60)
  const file = join(resolve(outDir), `${est.uai}-${safe}-${at.replace(/[-:]/g, '')}.teacher.age`)
  const text = [
    `Console des enseignants — ${est.name} (UAI ${est.uai})`,
    `Code d'activation émis le ${at} pour ${r.teacher.name} <${r.teacher.email}>.`,
    '',
    "Ce fichier a été chiffré pour vous seul (clé age de l'AMI). Remettez ce code à l'enseignant, à lui seul :",
    "il choisit son mot de passe avec, une seule fois, sur la page ci-dessous. pgi n'en garde pas de copie.",
    '',
    `Page     : ${r.setupUrl}`,
    `Adresse  : ${r.teacher.email}`,
    `Code     : ${r.setupCode.reveal()}`,
    `Valable jusqu'au ${r.expires ?? '(7 jours)'}`,
    '',
  ].join('\n')
  const e = new Encrypter()
  e.addRecipient(recipient)
  await writeFileAtomic(file, armor.encode(await e.encrypt(text)), {mode: 0o600})
  return file
}

const CODE_FILE_WHAT = {secret: "the teacher's one-time code", file: "the teacher's one-time code"}

/** Where a one-time code goes (see commands/db/teacher/add.ts). */
export type CodePlacement = {kind: 'terminal'} | {kind: 'output'} | {kind: 'file'; outDir: string}

/**
 * The rule: shown on a terminal (stdout a TTY, an interactive run, not --json); in the output when
 * asked (--show-code); otherwise into a file encrypted to the AMI, never printed, so that a
 * script's or CI's log never holds it.
 */
export function codePlacement(o: {showCode: boolean; json: boolean; interactive: boolean; stdoutTty: boolean; outDir: string}): CodePlacement {
  if (o.showCode) return {kind: 'output'}
  if (!o.json && o.interactive && o.stdoutTty) return {kind: 'terminal'}
  return {kind: 'file', outDir: o.outDir}
}

/** What `pgi db teacher add|reset` returns: the code only when --show-code asked for it. */
export interface TeacherCodeOutput {
  uai: string
  teacher: TeacherAccount
  setup_url: string
  expires: string | null
  /** terminal: shown there once, written nowhere; output: in this result; file: in setup_code_file. */
  setup_code_to: CodePlacement['kind']
  setup_code?: string
  /** The file encrypted to the AMI that holds the code. */
  setup_code_file?: string
}

/** Puts the code where `placement` says, and returns the command's result. `log` prints a line on stdout. */
export async function placeTeacherCode(ctx: DbContext, r: TeacherCodeResult, placement: CodePlacement, log: (line: string) => void): Promise<TeacherCodeOutput> {
  const base: TeacherCodeOutput = {uai: r.uai, teacher: r.teacher, setup_url: r.setupUrl, expires: r.expires, setup_code_to: placement.kind}
  const who = `${r.teacher.name} <${r.teacher.email}>`
  if (placement.kind === 'file') {
    const est = await ctx.fleet.establishment(r.uai)
    let file: string
    try {
      file = await writeTeacherCode(est, placement.outDir, r)
    } catch (err) {
      // the account exists with a code nobody has: say how to get a new one
      throw new UserError(ErrorCode.CONSOLE_FAILED, `the account of ${r.teacher.email} is ready in the console, but its one-time code could not be written: ${(err as Error).message}`, {
        where: {uai: r.uai},
        suggestions: [`Run \`pgi db teacher reset ${r.uai} ${r.teacher.email}\` on a terminal (the code is shown there), or with --out a folder you can write and the AMI's age key set.`],
      })
    }
    log(`${r.uai}: ${who}: the one-time code is in ${file} (encrypted to the AMI: age -d -i KEY FILE); the teacher uses it on ${r.setupUrl}`)
    return {...base, setup_code_file: file}
  }
  const lines = [
    `${r.uai}: ${who} (${r.teacher.status}, Tryton login ${r.teacher.tryton_login})`,
    `  One-time code : ${r.setupCode.reveal()}    (shown once; valid until ${r.expires ?? 'in 7 days'})`,
    `  Activation    : ${r.setupUrl}`,
    `  Hand the code to the teacher alone: they choose their password with it. pgi keeps no copy.`,
  ]
  if (placement.kind === 'terminal') {
    for (const l of lines) log(l)
    return base
  }
  // --show-code: in the JSON result; without --json, on stdout (the caller asked for it)
  for (const l of lines) log(l)
  return {...base, setup_code: r.setupCode.reveal()}
}
