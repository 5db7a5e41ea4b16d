/**
 * Flags shared by the `pgi rollout …` commands (selection like `pgi deploy`, images, timeouts).
 * Kept here, beside the service they feed, so the commands stay thin.
 */
import {Args, Flags} from '@oclif/core'

import {inventoryFlag, secretsDirFlag} from '../cli/base-command.js'
import type {DeployImage} from '../deploy/desired.js'
import type {Io} from '../io.js'
import {imagesDir} from '../paths.js'

export const versionArg = {version: Args.string({description: 'Image version to roll out (e.g. 2026.12.0 or pgi-tryton@2026.12.0).', required: true})}
export const uaiArgs = {uai: Args.string({description: 'UAI(s) of the establishments (else --group or --all).', required: false})}

export const selectionFlags = {
  inventory: inventoryFlag,
  'secrets-dir': secretsDirFlag,
  all: Flags.boolean({summary: 'Every establishment of the inventory.', default: false}),
  group: Flags.string({summary: 'The establishments of a group (`groups:` in the inventory).'}),
}

export const imageFlags = {
  'images-dir': Flags.string({summary: 'Folder of built images.', env: 'PGI_IMAGES_DIR', default: async () => imagesDir()}),
}

/**
 * `--bwlimit 2048` (KiB/s, as PVE and rsync count) or with a unit: `512K`, `2M`, `1.5M`
 * (binary units, per second). Uploads only.
 */
export const bwlimitFlag = Flags.custom<number>({
  summary: 'Cap each upload to a node at this rate: KiB/s, or with a unit (512K, 2M).',
  description: 'Per node: with --max-parallel N, up to N times this leaves this machine. A school link shared with classes keeps its room.',
  helpValue: '<rate>',
  parse: async (v) => {
    const m = /^(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B?(?:\/s)?)?$/i.exec(v.trim())
    const kib = m ? Number(m[1]) * ({'': 1, K: 1, M: 1024, G: 1024 * 1024} as Record<string, number>)[m[2]!.toUpperCase()]! : NaN
    if (!Number.isFinite(kib) || kib < 1) throw new Error(`--bwlimit: "${v}" is not a rate (KiB/s, or 512K, 2M, …), at least 1 KiB/s`)
    return Math.round(kib)
  },
})()

export const runFlags = {
  'max-parallel': Flags.integer({summary: 'Establishments updated at once.', default: 10, min: 1}),
  'max-per-hypervisor': Flags.integer({summary: 'Establishments updated at once on one hypervisor.', default: 4, min: 1}),
  'keep-old-disk': Flags.boolean({summary: 'Keep the previous OS disk attached as unused after a successful update (default: removed once the gate passed).', default: false}),
  'agent-timeout': Flags.integer({summary: 'Seconds to wait for the guest agent after a start.', default: 600, min: 1}),
  'health-timeout': Flags.integer({summary: 'Seconds the gate (health, databases, login) may take after the agent answered.', default: 1200, min: 1}),
  'shutdown-timeout': Flags.integer({summary: 'Seconds a clean shutdown may take during a rollback before the VM is stopped hard.', default: 180, min: 1}),
}

/** UAIs are every positional argument after the version (strict = false). */
export function positional(argv: unknown[], skip: number): string[] {
  return (argv as string[]).filter((a) => typeof a === 'string').slice(skip)
}

export function imageResolver(dir: string, io: Io): (v: string) => Promise<DeployImage> {
  // loaded when an image is resolved: the commands import this file for their flags
  return async (v) => (await import('../deploy/image.js')).resolveDeployImage(v, {imagesDir: dir, io})
}

/** The per-establishment table of a start/resume. */
export function resultTable(r: {establishments: {uai: string; ring: string; hypervisor: string; node: string; vmid: number; from?: string; to: string; outcome: string; step?: string; reason?: string}[]}): {head: string[]; rows: (string | number)[][]} {
  return {
    head: ['UAI', 'wave', 'hypervisor/node', 'VM', 'from → to', 'outcome', 'step', 'why'],
    rows: r.establishments.map((e) => [e.uai, e.ring, `${e.hypervisor}/${e.node}`, e.vmid, `${e.from ?? '?'} → ${e.to}`, e.outcome, e.step ?? '', e.reason ?? '']),
  }
}

/** SIGINT/SIGTERM stop the runner between steps (marks stay on the VMs: `pgi rollout resume` continues). */
export function stopSignal(io: Io): AbortSignal {
  // (the rollout service allows it any number of listeners: every wait in flight listens on it)
  const ac = new AbortController()
  const stop = (sig: string) => {
    io.warn(`${sig}: stopping after the current step of each establishment in flight; run \`pgi rollout resume\` to continue`)
    ac.abort(new Error(sig))
  }
  process.once('SIGINT', () => stop('SIGINT'))
  process.once('SIGTERM', () => stop('SIGTERM'))
  return ac.signal
}
