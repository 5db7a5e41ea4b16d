/**
 * What the native tests of pgi-stage-delta share: the tool run without blocking this process (the
 * link simulator serving its store lives here), its last JSON line parsed; a store folder served
 * through the lab's link simulator as establishment lab1/1001.
 */
import {spawn, spawnSync} from 'node:child_process'
import {dirname, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {linkSimConfigFrom} from '../../../src/lab/link-sim-config.js'
import {LinkSimulator} from '../../../src/lab/link-sim.js'

export const TOOL = resolve(dirname(fileURLToPath(import.meta.url)), '../../../images/pgi-tryton/files/usr/local/sbin/pgi-stage-delta')
export const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0

export interface Run {
  status: number | null
  out: Record<string, unknown>
}

export async function tool(args: string[], stateDir: string): Promise<Run> {
  const r = await new Promise<{status: number | null; stdout: string; stderr: string}>((ok) => {
    const c = spawn('python3', [TOOL, ...args], {env: {...process.env, PGI_STAGE_DELTA_DIR: stateDir}, timeout: 120_000})
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    c.on('close', (status) => ok({status, stdout, stderr}))
  })
  const last = r.stdout.trim().split('\n').pop() ?? ''
  try {
    return {status: r.status, out: JSON.parse(last) as Record<string, unknown>}
  } catch {
    return {status: r.status, out: {raw: r.stdout + r.stderr}}
  }
}

/** The store folder behind the link simulator (a profile for lab1/1001 if given); its port on loopback. */
export async function serveStore(store: string, site?: Record<string, unknown>): Promise<{sim: LinkSimulator; port: number}> {
  const sim = new LinkSimulator({config: linkSimConfigFrom({uplink: {ports: {80: {dir: store}}}, ...(site ? {sites: {'lab1/1001': site}} : {})}, 'test')})
  const a = await sim.attach({node: 'lab1', vmid: 1001}, 80, {host: '127.0.0.1', port: 0})
  return {sim, port: Number(a.address.split(':')[1])}
}
