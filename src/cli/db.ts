/**
 * Flags and arguments of `pgi db …`, parsed once here: database names checked with the engine's
 * rule (a bad name is a usage error naming the argument, before any hypervisor is asked), the
 * fleet flags, and how a command opens the fleet and closes it.
 */
import {join} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {dbNameProblem, DB_PREFIX_RE, LOGIN_RE, RESERVED_PREFIXES} from '../db/names.js'
import {UsageError} from '../errors.js'
import type {Io} from '../io.js'
import {stateDir} from '../paths.js'
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
  const units = ['B', 'KB', 'MB', 'GB', 'TB']
  let v = n
  let i = 0
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000
    i++
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

/** The UAI argument every `pgi db` command but list starts with. */
export const uaiArg = Args.string({description: 'UAI of the establishment (e.g. 0130040Y).', required: true})
