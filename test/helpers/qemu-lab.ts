import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {expect} from 'vitest'

import {parseHandoff, type HandoffDocument} from '../../src/fleet/handoff.js'
import {run} from '../../src/exec.js'
import type {Io} from '../../src/io.js'
import {assertBuilt, runPgi, type PgiRun} from './cli.js'
import {cachedPgiImage} from './e2e-image.js'

/**
 * The set-up the qemu end-to-end tests share (test/e2e/deploy, db, console): `pgi deploy` into a
 * qemu lab with the lab's forwarded ports and deadlines for software-emulated boots, the AMI's
 * handoff opened with the lab's AMI key (`age -d`, as the AMI does), and, for the tests that work
 * on one deployed establishment, the whole lab of one node and one establishment deployed.
 */

/** `pgi deploy UAI… --yes --json` of the e2e image into the lab, its handoffs into `handoffDir`. */
export function qemuDeployArgs(uais: string[], o: {images: {root: string; version: string}; labDir: string; handoffDir: string}, extra: string[] = []): string[] {
  return ['deploy', ...uais, '--yes', '--json', '--image', o.images.version, '--images-dir', o.images.root, '--lab-dir', o.labDir, '--handoff-dir', o.handoffDir, '--health-timeout', '1800', '--agent-timeout', '900', ...extra]
}

/** The handoff of `uai` in `handoffDir`, decrypted with the lab's AMI identity. */
export async function openLabHandoff(labDir: string, handoffDir: string, uai: string): Promise<HandoffDocument> {
  const file = join(handoffDir, `${uai}.handoff.age`)
  const r = await run('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), file])
  return parseHandoff(r.stdout, file)
}

/** What pgi's environment must not inherit from the caller's: every run points at the test's own lab. */
const CALLER_VARIABLES = ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR', 'PGI_CLASS_DIR', 'PGI_TEACHER_DIR', 'PGI_CONSOLE_URL', 'PGI_TOKEN_ID']

/** A deployed establishment of a qemu lab, its handoff opened. */
export interface DeployedSite {
  uai: string
  handoff: HandoffDocument
  /** Its Tryton server for the desktop client (the lab's forwarded port). */
  rpcUrl: string
}

/** A qemu lab with its establishments deployed; `uai`, `handoff`, `rpcUrl`: the first one's. */
export interface DeployedQemuLab extends DeployedSite {
  /** The test's temporary folder (lab, state, handoffs). */
  base: string
  labDir: string
  /** pgi's environment: the lab's inventory and secret store, a state folder of its own, CI. */
  env: NodeJS.ProcessEnv
  /** Every establishment of the lab, deployed, in the inventory's order. */
  sites: DeployedSite[]
  /** Where deploy wrote the handoffs. */
  handoffDir: string
}

/** The bundled CLI in the lab's environment (40 min unless told: software emulation). */
export function labPgi(lab: Pick<DeployedQemuLab, 'env' | 'base'>, args: string[], timeoutMs = 40 * 60_000): Promise<PgiRun> {
  return runPgi(args, {env: lab.env, cwd: lab.base, timeoutMs})
}

/** The run ended with exit 0 (else its output's end in the failure message). */
export function expectOk(r: PgiRun): void {
  expect(r.exitCode, `${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}`).toBe(0)
}

/**
 * A qemu lab of one node and `sites` establishments (default 1) in a temporary folder (`prefix`),
 * every establishment deployed at once from the cached reference image and its handoff opened.
 * Stop it with stopQemuLab (in afterAll, even when this failed half-way: `started` gets the lab as
 * soon as the folder exists).
 */
export async function deployedQemuLab(o: {prefix: string; io: Io; sites?: number; started?: (lab: Pick<DeployedQemuLab, 'base' | 'labDir' | 'env'>) => void}): Promise<DeployedQemuLab> {
  assertBuilt()
  const images = await cachedPgiImage(o.io)
  const base = await mkdtemp(join(tmpdir(), o.prefix))
  const labDir = join(base, 'lab')
  const env: NodeJS.ProcessEnv = {...process.env, PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
  for (const k of CALLER_VARIABLES) delete env[k]
  o.started?.({base, labDir, env})
  const lab = {base, env}
  expectOk(await labPgi(lab, ['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', String(o.sites ?? 1), '--dir', labDir, '--json'], 10 * 60_000))
  env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
  env.PGI_SECRETS_DIR = join(labDir, 'secrets')
  const uais = (await labPgi(lab, ['inventory', 'list', '--json'])).json!.result.map((e: {uai: string}) => e.uai) as string[]
  const handoffDir = join(base, 'handoffs')
  expectOk(await labPgi(lab, qemuDeployArgs(uais, {images, labDir, handoffDir}), 60 * 60_000))
  const sites: DeployedSite[] = []
  for (const uai of uais) {
    const handoff = await openLabHandoff(labDir, handoffDir, uai)
    sites.push({uai, handoff, rpcUrl: `http://${handoff.desktopClient.host}:${handoff.desktopClient.port}/`})
  }
  return {base, labDir, env, ...sites[0]!, sites, handoffDir}
}

/** Stops the lab and removes its folder (kept with PGI_E2E_KEEP=1). */
export async function stopQemuLab(lab: Pick<DeployedQemuLab, 'base' | 'labDir' | 'env'> | undefined): Promise<void> {
  if (!lab) return
  await labPgi(lab, ['lab', 'stop', '--dir', lab.labDir], 5 * 60_000).catch(() => undefined)
  if (!process.env.PGI_E2E_KEEP) await rm(lab.base, {recursive: true, force: true})
}
