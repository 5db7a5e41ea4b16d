/**
 * Flags and arguments of `pgi db …`, parsed once here: database names checked with the engine's
 * rule (a bad name is a usage error naming the argument, before any hypervisor is asked), the
 * fleet flags, and how a command opens the fleet and closes it.
 */
import {join} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {dbNameProblem, DB_PREFIX_RE, LOGIN_RE, RESERVED_PREFIXES, teacherEmailProblem, teacherNameProblem} from '../db/names.js'
import {UsageError} from '../errors.js'
import type {Io} from '../io.js'
import {stateDir} from '../paths.js'
import {formatDecimalBytes} from '../size.js'
import {inventoryFlag, secretsDirFlag, STATE_DIR_HELP} from './flags.js'

/** The variable the secret of --token-id comes from (never a flag value). */
export const DB_TOKEN_SECRET_ENV = 'PGI_TOKEN_SECRET'

function dbName(value: string, where: {flag: string} | {argument: string}): string {
  const problem = dbNameProblem(value)
  if (problem) throw new UsageError(problem, {where, suggestions: ['Database names are PostgreSQL identifiers: e.g. bts_cg1_modele, tp_facturation.']})
  return value
}

/** A required positional database name. */
export function dbNameArg(argument: string, description: string) {
  return Args.custom<string>({parse: async (v) => dbName(v, {argument})})({description, required: true})
}

/** An optional positional database name. */
export function optionalDbNameArg(argument: string, description: string) {
  return Args.custom<string>({parse: async (v) => dbName(v, {argument})})({description, required: false})
}

/** A flag whose value is a database name. */
export function dbNameFlag(flag: string, summary: string, extra: {required?: boolean; exclusive?: string[]} = {}) {
  return Flags.custom<string>({parse: async (v) => dbName(v, {flag}), helpValue: '<database>'})({summary, ...extra})
}

/** `--prefix`: the start of a class's database names. */
export const prefixFlag = Flags.custom<string>({
  summary: "Start of the class's database names (default: from the class code in the CSV, e.g. bts_cg1).",
  helpValue: '<prefix>',
  parse: async (v) => {
    if (!DB_PREFIX_RE.test(v) || RESERVED_PREFIXES.some((p) => v.startsWith(p))) {
      throw new UsageError(`--prefix "${v}": 1 to 40 lowercase letters, digits and _, starting with a letter`, {where: {flag: 'prefix'}})
    }
    return v
  },
})()

/** `--teacher`: the teacher's Tryton login. */
export const teacherFlag = Flags.custom<string>({
  summary: "The teacher's Tryton login in every database of the class (made when the model lacks it).",
  helpValue: '<login>',
  default: 'professeur',
  parse: async (v) => {
    if (!LOGIN_RE.test(v) || ['admin', 'root', 'pgi_health'].includes(v)) {
      throw new UsageError(`--teacher "${v}": lowercase letters, digits, . _ - (not admin)`, {where: {flag: 'teacher'}})
    }
    return v
  },
})()

/** `--fiscal-year 2026`. */
export const fiscalYearFlag = Flags.custom<number>({
  summary: 'Year the fiscal year starts in (default: the current calendar year).',
  helpValue: '<YYYY>',
  parse: async (v) => {
    const y = Number(v)
    if (!/^\d{4}$/.test(v) || y < 1900 || y > 2999) throw new UsageError(`--fiscal-year "${v}" is not a year (YYYY)`, {where: {flag: 'fiscal-year'}})
    return y
  },
})()

/** `--from latest|ID` of a restore. */
export const backupIdFlag = Flags.custom<string>({
  summary: 'Which backup: latest (default) or an ID from `pgi db backups`.',
  helpValue: '<latest|ID>',
  default: 'latest',
  parse: async (v) => {
    if (v !== 'latest' && !/^[0-9]{8}T[0-9]{6}Z(-[a-z-]+(-\d+)?)?$/.test(v)) {
      throw new UsageError(`--from "${v}" is not a backup id (latest, or an ID as \`pgi db backups\` shows it: 20260314T101500Z-manual, 20260301T023012Z)`, {where: {flag: 'from'}})
    }
    return v
  },
})()

/** The fleet flags every `pgi db` command takes. */
export const dbFleetFlags = {
  inventory: inventoryFlag,
  'secrets-dir': secretsDirFlag,
  'token-id': Flags.string({summary: `Use this API token (USER@REALM!TOKENID) instead of the inventory's (an AMI's own); its secret comes from ${DB_TOKEN_SECRET_ENV}.`, env: 'PGI_TOKEN_ID'}),
}

/** `--out DIR` of `pgi db class`: where the encrypted passwords file goes. */
export const classOutFlag = Flags.string({
  char: 'o',
  summary: "Folder the class's passwords file (encrypted to the AMI) is written to.",
  description: STATE_DIR_HELP,
  env: 'PGI_CLASS_DIR',
  default: async () => join(stateDir(), 'classes'),
  defaultHelp: async () => '<state dir>/classes',
})

/** Opens the fleet for a `pgi db` command; `use` runs with it, and it is closed after. */
export async function withDbContext<R>(flags: {inventory: string; 'secrets-dir': string; 'token-id'?: string}, io: Io, use: (ctx: import('../db/service.js').DbContext) => Promise<R>): Promise<R> {
  // the engine is loaded when the command runs, not with every command (start-up time)
  const [{FleetSession}, {Secret}] = await Promise.all([import('../fleet/open.js'), import('../secret.js')])
  let token: {id: string; secret: InstanceType<typeof Secret>} | undefined
  if (flags['token-id']) {
    const secret = process.env[DB_TOKEN_SECRET_ENV]
    if (!secret) {
      throw new UsageError(`--token-id needs the token's secret in ${DB_TOKEN_SECRET_ENV}`, {
        where: {flag: 'token-id'},
        suggestions: [`Export ${DB_TOKEN_SECRET_ENV} (e.g. \`read -rs ${DB_TOKEN_SECRET_ENV}; export ${DB_TOKEN_SECRET_ENV}\`); pgi never takes a secret as a flag value.`],
      })
    }
    token = {id: flags['token-id'], secret: new Secret(secret)}
  }
  const fleet = await FleetSession.open({inventory: flags.inventory, secretsDir: flags['secrets-dir'], io, ...(token ? {token} : {})})
  try {
    return await use({fleet, io})
  } finally {
    await fleet.close()
  }
}

/** 1234567 → "1.2 MB" (tables for people). */
export function humanBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return ''
  return formatDecimalBytes(n, {kilo: 'KB', digits: (v) => (v < 10 ? 1 : 0)})
}

/** The UAI argument every `pgi db` command but list starts with. */
export const uaiArg = Args.string({description: 'UAI of the establishment (e.g. 0130040Y).', required: true})

// ---- the teachers' console (pgi db teacher …, pgi db audit) ----------------------------------------

function teacherEmail(value: string, where: {flag: string} | {argument: string}): string {
  const problem = teacherEmailProblem(value)
  if (problem) throw new UsageError(problem, {where, suggestions: ["The teacher's e-mail address, as their account knows it (`pgi db teacher list UAI`)."]})
  return value.trim().toLowerCase()
}

/** The EMAIL argument of `pgi db teacher disable|enable|reset`. */
export const teacherEmailArg = Args.custom<string>({parse: async (v) => teacherEmail(v, {argument: 'email'})})({description: "The teacher's e-mail address (their account in the console).", required: true})

/** `--email` of `pgi db teacher add`. */
export const teacherEmailFlag = Flags.custom<string>({
  summary: "The teacher's e-mail address: their login in the console (kept in lowercase).",
  helpValue: '<address>',
  parse: async (v) => teacherEmail(v, {flag: 'email'}),
})({required: true})

/** `--name` of `pgi db teacher add`. */
export const teacherNameFlag = Flags.custom<string>({
  summary: "The teacher's name as the console shows it (e.g. \"Marie Curie\").",
  helpValue: '<name>',
  parse: async (v) => {
    const problem = teacherNameProblem(v)
    if (problem) throw new UsageError(`--name: ${problem}`, {where: {flag: 'name'}})
    return v.trim()
  },
})({required: true})

/** `--console-url`: the console's address as the teacher reaches it, when it is not the VM's own. */
export const consoleUrlFlag = Flags.custom<string>({
  summary: "The console's address as teachers reach it (default https://<the VM's address>/console/), for the activation link.",
  helpValue: '<https://host[:port]/console/>',
  env: 'PGI_CONSOLE_URL',
  parse: async (v) => {
    let u: URL
    try {
      u = new URL(v)
    } catch {
      throw new UsageError(`--console-url "${v}" is not a URL`, {where: {flag: 'console-url'}, suggestions: ['e.g. https://pgi.lycee-exemple.fr/console/']})
    }
    if (u.protocol !== 'https:' || u.search || u.hash || u.username || u.password) {
      throw new UsageError(`--console-url "${v}": an https:// address without query, fragment or credentials`, {where: {flag: 'console-url'}, suggestions: ['The console is served over HTTPS only: e.g. https://pgi.lycee-exemple.fr/console/']})
    }
    return u.href.endsWith('/') ? u.href : `${u.href}/`
  },
})()

/** `--out DIR` of `pgi db teacher add|reset`: where a code goes when it is not shown on a terminal. */
export const teacherOutFlag = Flags.string({
  summary: 'Folder the one-time code file (encrypted to the AMI) is written to, when the code is not shown on a terminal.',
  description: STATE_DIR_HELP,
  env: 'PGI_TEACHER_DIR',
  default: async () => join(stateDir(), 'teachers'),
  defaultHelp: async () => '<state dir>/teachers',
})

/** `--show-code`: the one-time code in the output even without a terminal (--json, a pipe). */
export const showCodeFlag = Flags.boolean({
  summary: 'Put the one-time code in the output (also in --json and when stdout is not a terminal) instead of a file encrypted to the AMI.',
  description: 'The code lets whoever holds it choose the teacher\'s password for 7 days: use this only where the output is not logged (a script that hands the code on at once).',
  default: false,
})

const SINCE_UNITS: Record<string, number> = {m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000}

/**
 * `--since`: a date (2026-09-01, midnight UTC), a date and time (2026-09-01T08:00, UTC unless it
 * says its offset: 2026-09-01T08:00+02:00), or a duration back from now (30m, 12h, 7d, 2w).
 * Normalised to the audit log's own form, YYYY-MM-DDTHH:MM:SSZ (UTC), which it compares as text.
 */
export function parseSince(v: string, now = Date.now()): string {
  const bad = () =>
    new UsageError(`--since "${v}" is neither a date (2026-09-01), a date and time (2026-09-01T08:00, UTC unless an offset is given) nor a duration (30m, 12h, 7d, 2w)`, {where: {flag: 'since'}})
  const s = v.trim()
  const rel = /^(\d{1,5})([mhdw])$/.exec(s)
  let ms: number
  if (rel) ms = now - Number(rel[1]) * SINCE_UNITS[rel[2]!]!
  else {
    const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?(Z|[+-]\d{2}:?\d{2})?)?$/.exec(s)
    if (!m) throw bad()
    const [, y, mo, d, hh = '00', mi = '00', ss = '00', zone = 'Z'] = m
    const parts = [y, mo, d, hh, mi, ss].map(Number) as [number, number, number, number, number, number]
    const utc = Date.UTC(parts[0], parts[1] - 1, parts[2], parts[3], parts[4], parts[5])
    const check = new Date(utc)
    // 2026-02-30 or 25:00 roll over in Date.UTC: refused rather than moved
    if (check.getUTCFullYear() !== parts[0] || check.getUTCMonth() !== parts[1] - 1 || check.getUTCDate() !== parts[2] || check.getUTCHours() !== parts[3] || check.getUTCMinutes() !== parts[4] || check.getUTCSeconds() !== parts[5]) throw bad()
    let offset = 0
    if (zone !== 'Z') {
      const z = /^([+-])(\d{2}):?(\d{2})$/.exec(zone)!
      offset = (z[1] === '-' ? -1 : 1) * (Number(z[2]) * 60 + Number(z[3])) * 60_000
    }
    ms = utc - offset
  }
  if (!Number.isFinite(ms) || ms < Date.UTC(2000, 0, 1)) throw bad()
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
}

export const sinceFlag = Flags.custom<string>({
  summary: 'Only actions since then: a date (2026-09-01), a date and time (2026-09-01T08:00, UTC unless an offset is given) or a duration back from now (30m, 12h, 7d, 2w).',
  helpValue: '<when>',
  parse: async (v) => parseSince(v),
})()

export const auditLimitFlag = Flags.custom<number>({
  summary: 'At most this many entries, the newest (1 to 100000).',
  helpValue: '<n>',
  default: 200,
  parse: async (v) => {
    if (!/^\d{1,6}$/.test(v) || Number(v) < 1 || Number(v) > 100_000) throw new UsageError(`--limit "${v}": a whole number from 1 to 100000`, {where: {flag: 'limit'}})
    return Number(v)
  },
})()

export const auditActorFlag = Flags.custom<string>({
  summary: "Only this actor's actions: a teacher's e-mail, ami:LOGIN, or cli:root (pgi db teacher …).",
  helpValue: '<actor>',
  parse: async (v) => {
    const s = v.trim()
    if (!(teacherEmailProblem(s) === undefined || /^(ami|cli):[a-z_][a-z0-9_-]{0,62}$/.test(s) || s === 'anonyme')) {
      throw new UsageError(`--actor "${v}": a teacher's e-mail, ami:LOGIN or cli:root`, {where: {flag: 'actor'}})
    }
    return teacherEmailProblem(s) === undefined ? s.toLowerCase() : s
  },
})()
