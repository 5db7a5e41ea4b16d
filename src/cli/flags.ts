/**
 * Flags and arguments shared by the commands, with typed parsers: a value is parsed once, here at
 * the edge, and the engine's requests carry what was parsed (an image reference, a rate in KiB/s),
 * never the raw text to be parsed again.
 *
 * Defaults that depend on the machine (the state folder under the user's home, the current folder)
 * are computed when the command runs; `--help` shows them as `<state dir>/…` (`defaultHelp`):
 * oclif's manifest (oclif.manifest.json, written at build time) would otherwise hold the paths of
 * the machine that built pgi.
 */
import {join} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {UsageError} from '../errors.js'
import type {ImageRef} from '../image/images.js'
import {REPORT_FORMATS, type ReportFormat, type ReportTarget} from '../report/types.js'
import {defaultInventoryPath, imagesDir, secretsDir, stateDir} from '../paths.js'

/** How `<state dir>` in the help is found (src/paths.ts stateDir). */
export const STATE_DIR_HELP = '<state dir> is $PGI_STATE_DIR, else $XDG_STATE_HOME/pgi, else ~/.local/state/pgi.'

/** `-i/--inventory` (env PGI_INVENTORY): a folder of YAML files or one file. */
export const inventoryFlag = Flags.string({
  char: 'i',
  summary: 'Inventory: a folder of YAML files or one YAML file.',
  env: 'PGI_INVENTORY',
  default: async () => defaultInventoryPath(),
  defaultHelp: async () => './inventory',
  helpGroup: 'GLOBAL',
})

/** `--secrets-dir` (env PGI_SECRETS_DIR): the age-encrypted secret store. */
export const secretsDirFlag = Flags.string({
  summary: 'Secret store folder (age-encrypted files).',
  description: STATE_DIR_HELP,
  env: 'PGI_SECRETS_DIR',
  default: async () => secretsDir(),
  defaultHelp: async () => '<state dir>/secrets',
  helpGroup: 'GLOBAL',
})

/** `--images-dir` (env PGI_IMAGES_DIR): the built, signed images. */
export const imagesDirFlag = Flags.string({
  summary: 'Folder of built images.',
  description: STATE_DIR_HELP,
  env: 'PGI_IMAGES_DIR',
  default: async () => imagesDir(),
  defaultHelp: async () => '<state dir>/images',
})

/**
 * Where the AMI handoffs of deploy and rollout go, and how they name a lab's VMs (deploy writes
 * each handoff; a rollout writes a new one when an update changes what it says).
 */
export const handoffTargetFlags = {
  'handoff-dir': Flags.string({
    summary: 'Folder for the AMI handoff files (default: where each establishment\'s handoff was written before, else <state dir>/handoffs).',
    description: `A handoff is written when it is missing there or when what it says changed (new secrets, host keys, address); an up-to-date establishment keeps its file. ${STATE_DIR_HELP}`,
    env: 'PGI_HANDOFF_DIR',
  }),
  'lab-dir': Flags.string({summary: 'The inventory is a pgi lab\'s: handoffs name the lab\'s forwarded 127.0.0.1 ports (qemu labs) or the addresses the lab gives its VMs (simulated labs).'}),
}

/** The default folder of the AMI handoff files, for the commands that always write there. */
export function handoffDirFlag(summary: string) {
  return Flags.string({
    char: 'o',
    summary,
    description: STATE_DIR_HELP,
    env: 'PGI_HANDOFF_DIR',
    default: async () => join(stateDir(), 'handoffs'),
    defaultHelp: async () => '<state dir>/handoffs',
  })
}

/** Which establishments: UAIs as arguments, or `--all`, or `--group`. */
export const selectionFlags = {
  inventory: inventoryFlag,
  'secrets-dir': secretsDirFlag,
  all: Flags.boolean({summary: 'Every establishment of the inventory.', default: false}),
  group: Flags.string({summary: 'The establishments of a group (`groups:` in the inventory).'}),
}

/** UAIs: every positional argument after the declared ones (the commands are not strict). */
export const uaiArgs = {uai: Args.string({description: 'UAI(s) of the establishments (else --group or --all).', required: false})}

/**
 * "2026.12.0" (the reference image, pgi-tryton) or "NAME@2026.12.0": the image reference, parsed
 * here once. src/image/images.ts's parseImageRef is the one grammar; it is loaded when a value is
 * parsed (commands.js, loaded by every command, must not load the engine: start-up time).
 */
async function imageRef(value: string, where: {flag: string} | {argument: string}): Promise<ImageRef> {
  const {parseImageRef} = await import('../image/images.js')
  try {
    return parseImageRef(value)
  } catch (err) {
    throw new UsageError((err as Error).message, {where, suggestions: ['List the built images with `pgi image list`.']})
  }
}

/** `--image NAME@VERSION` or `--image VERSION`. */
export const imageRefFlag = Flags.custom<ImageRef>({
  helpValue: '<[name@]version>',
  parse: async (v) => imageRef(v, {flag: 'image'}),
})

/** A required positional image reference, `version` (VERSION or NAME@VERSION). */
export function imageRefArgument(description: string) {
  return Args.custom<ImageRef>({parse: async (v) => imageRef(v, {argument: 'version'})})({description, required: true})
}

/** The image version a rollout command works on (first positional argument). */
export const imageRefArg = {
  version: imageRefArgument('Image version to roll out (e.g. 2026.12.0), or NAME@VERSION for an image other than pgi-tryton.'),
}

/**
 * `--bwlimit 2048` (KiB/s, as PVE and rsync count) or with a unit: `512K`, `2M`, `1.5M`
 * (binary units, per second). Uploads only.
 */
export function parseRateKiB(v: string, flag = 'bwlimit'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B?(?:\/s)?)?$/i.exec(v.trim())
  const kib = m ? Number(m[1]) * ({'': 1, K: 1, M: 1024, G: 1024 * 1024} as Record<string, number>)[m[2]!.toUpperCase()]! : NaN
  if (!Number.isFinite(kib) || kib < 1) throw new UsageError(`--${flag}: "${v}" is not a rate (KiB/s, or 512K, 2M, …), at least 1 KiB/s`, {where: {flag}})
  return Math.round(kib)
}

export const bwlimitFlag = Flags.custom<number>({
  summary: 'Cap each upload to a node at this rate: KiB/s, or with a unit (512K, 2M).',
  description: 'Per node: with --max-parallel N, up to N times this leaves this machine. A school link shared with classes keeps its room.',
  helpValue: '<rate>',
  parse: async (v) => parseRateKiB(v),
})()

/** `--total-bwlimit 100M`: the Région's uplink shared by all the transfers of a staging run. */
export const totalBwlimitFlag = Flags.custom<number>({
  summary: "Cap the Région's uplink across all the establishments being staged: KiB/s, or with a unit (512K, 100M).",
  description: 'pgi decides how many transfer at once and the cap each one gets (a fair share, at most --bwlimit each) so that the caps never add up to more; a share freed by a finished transfer goes to the others. Default: delivery.total_bwlimit of the inventory, else no total cap.',
  helpValue: '<rate>',
  parse: async (v) => parseRateKiB(v, 'total-bwlimit'),
})()

/**
 * PGI_NOW (an ISO instant): the clock of a staging starts there and runs on at the real pace, so
 * tests can place "now" inside or outside a transfer window without sleeping. Read here only,
 * at the command line's edge.
 */
export function clockFromEnv(env: NodeJS.ProcessEnv): (() => Date) | undefined {
  const v = env.PGI_NOW
  if (v === undefined || v === '') return undefined
  const at = Date.parse(v)
  if (!/^\d{4}-\d\d-\d\dT/.test(v) || Number.isNaN(at)) throw new UsageError(`PGI_NOW "${v}" is not an ISO instant (e.g. 2026-12-07T21:30:00Z)`, {where: {flag: 'PGI_NOW'}, suggestions: ['Unset PGI_NOW to use the system clock.']})
  const offset = at - Date.now()
  return () => new Date(Date.now() + offset)
}

/** "10m", "90s", "1h", "1h30m" or plain seconds ("600") → milliseconds. */
export function parseDurationMs(v: string, flag: string): number {
  const t = v.trim()
  const units: Record<string, number> = {h: 3_600_000, m: 60_000, s: 1000}
  let ms = 0
  if (/^\d+$/.test(t)) ms = Number(t) * 1000
  else if (/^(\d+[hms])+$/.test(t)) for (const [, n, u] of t.matchAll(/(\d+)([hms])/g)) ms += Number(n) * units[u!]!
  else throw new UsageError(`--${flag}: "${v}" is not a duration (e.g. 10m, 90s, 1h, or seconds)`, {where: {flag}})
  if (ms > 24 * 3_600_000) throw new UsageError(`--${flag}: ${v} is more than a day`, {where: {flag}})
  return ms
}

/** `--lock-wait 10m`: how long a rollout waits for the fleet's rollout lock held by another runner. */
export const lockWaitFlag = Flags.custom<number>({
  summary: 'Wait this long for another runner\'s rollout of this fleet to finish (e.g. 10m, 90s); default: refuse at once (exit 7).',
  description: 'The lock is held on the hypervisors (one VM per hypervisor, with PVE\'s compare-and-swap), so runners on different machines see it. See docs/ci.md.',
  helpValue: '<duration>',
  env: 'PGI_LOCK_WAIT',
  parse: async (v) => parseDurationMs(v, 'lock-wait'),
})()

/**
 * A duration flag given in seconds on the command line (or with a unit: 90s, 10m, 1h) whose value
 * is milliseconds, the engine's one time unit: commands pass it on as it is, never converting.
 */
export function secondsFlag(opts: {summary: string; default: number; min?: number; env?: string}) {
  return Flags.custom<number>({
    summary: opts.summary,
    helpValue: '<seconds>',
    ...(opts.env ? {env: opts.env} : {}),
    default: opts.default * 1000,
    defaultHelp: async () => String(opts.default),
    parse: async (v, ctx, flagOpts) => {
      const name = flagOpts.name ?? 'duration'
      const ms = parseDurationMs(v, name)
      if (ms < (opts.min ?? 1) * 1000) throw new UsageError(`--${name}: ${v} is less than ${opts.min ?? 1} s`, {where: {flag: name}})
      return ms
    },
  })()
}

/** Flags of the commands that update establishments (rollout start and resume). */
export const runFlags = {
  'lock-wait': lockWaitFlag,
  'max-parallel': Flags.integer({summary: 'Establishments updated at once.', default: 10, min: 1}),
  'max-per-hypervisor': Flags.integer({summary: 'Establishments updated at once on one hypervisor.', default: 4, min: 1}),
  'keep-old-disk': Flags.boolean({summary: 'Keep the previous OS disk attached as unused after a successful update (default: removed once the gate passed).', default: false}),
  'agent-timeout': secondsFlag({summary: 'Seconds to wait for the guest agent after a start.', default: 600}),
  'health-timeout': secondsFlag({summary: 'Seconds the gate (health, databases, login) may take after the agent answered.', default: 1200}),
  'shutdown-timeout': secondsFlag({summary: 'Seconds a clean shutdown may take during a rollback before the VM is stopped hard.', default: 180}),
  'migration-timeout': secondsFlag({summary: 'Seconds a major upgrade\'s migration (databases carried into the new PostgreSQL and Tryton) may take in the guest before rolling back; 0: 20 min + 20 min per database.', default: 0}),
}

/**
 * `--report junit FILE` / `--report markdown FILE` (repeatable; also written `--report junit=FILE`
 * or `--report=junit:FILE`). The two-word form is joined into one value before oclif parses the
 * command line (joinReportArgs, called by the base command): an oclif flag takes one value, and a
 * FILE left alone would be read as a UAI by the commands that take UAIs.
 */
export function parseReportTarget(v: string): ReportTarget {
  const m = /^([a-z]+)[:=](.+)$/.exec(v)
  const format = (m ? m[1] : v) as ReportFormat
  if (!REPORT_FORMATS.includes(format)) {
    throw new UsageError(`--report: "${m ? m[1] : v}" is not a report format (${REPORT_FORMATS.join(' or ')})`, {where: {flag: 'report'}, suggestions: ['Write `--report junit FILE` or `--report markdown FILE`.']})
  }
  if (!m || m[2]!.trim() === '') throw new UsageError(`--report ${format} needs a file to write`, {where: {flag: 'report'}, suggestions: [`Write \`--report ${format} FILE\`, e.g. \`--report ${format} ${format === 'junit' ? 'pgi-report.xml' : 'pgi-report.md'}\`.`]})
  return {format, file: m[2]!}
}

export const reportFlag = Flags.custom<ReportTarget>({
  summary: 'Also write the result as a CI report: `--report junit FILE` (test cases per establishment or problem) or `--report markdown FILE` (a merge-request comment). Repeatable.',
  helpValue: '<junit|markdown> <file>',
  multiple: true,
  multipleNonGreedy: true,
  parse: async (v) => parseReportTarget(v),
})()

/** `--report junit FILE` → `--report=junit:FILE` (see parseReportTarget); anything after `--` is left alone. */
export function joinReportArgs(argv: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--') {
      out.push(...argv.slice(i))
      break
    }
    const eq = /^--report=([a-z]+)$/.exec(a)
    const fmt = a === '--report' ? argv[i + 1] : eq ? eq[1] : undefined
    const fileAt = a === '--report' ? i + 2 : i + 1
    const file = argv[fileAt]
    if (fmt !== undefined && (REPORT_FORMATS as readonly string[]).includes(fmt) && file !== undefined && !file.startsWith('-')) {
      out.push(`--report=${fmt}:${file}`)
      i = fileAt
      continue
    }
    out.push(a)
  }
  return out
}
