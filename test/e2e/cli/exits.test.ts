/**
 * Every command ends within 2 s of its last output when a hypervisor fails, whatever the failure:
 * a certificate that does not match the pin, a refused connection, a node that accepts connections
 * but never answers. Through the bundled CLI (bin/run.js), each run measured: a timer or a
 * connection pool left behind would keep pgi alive after it printed its error.
 *
 * The fleet is deployed on a healthy simulated lab first (so every command has real secrets,
 * VMs and staged images to work with); each failure is then an inventory pointing at the same
 * node through a broken path: the fingerprint changed, the port of a closed socket, or a TLS server
 * of this test holding the node's own certificate (the pin matches) that never answers a request.
 */
import {readFile, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {createServer as createNetServer, type Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {createServer as createTlsServer, type Server} from 'node:tls'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {describeRun, ensureBuilt, makeImages, runPgi, type CliRun} from './support.js'

/** What "ends with its output" allows: the process exits within this of its last byte. */
const EXIT_AFTER_OUTPUT_MS = 2000
/** A dead hypervisor costs a read deadline (5 s) per run, not a minute. */
const RUN_BOUND_MS = 30_000

let base: string
let env: NodeJS.ProcessEnv
let labInventory: string
let uai: string
let dead: Server
const deadSockets = new Set<Socket>()

async function freePort(): Promise<number> {
  const s = createNetServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()))
  const port = (s.address() as {port: number}).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

beforeAll(async () => {
  ensureBuilt()
  base = await mkdtemp(join(tmpdir(), 'pgi-exits-'))
  const images = join(base, 'images')
  await makeImages(images, ['2026.1.0', '2026.2.0'])
  const lab = join(base, 'lab')
  labInventory = join(lab, 'inventory', 'lab.yaml')
  env = {...process.env, CI: 'true', PGI_STATE_DIR: join(base, 'state'), PGI_LAB_DIR: lab, PGI_IMAGES_DIR: images, PGI_SECRETS_DIR: join(lab, 'secrets'), PGI_LOG_LEVEL: 'info'}
  delete env.PGI_INVENTORY
  for (const args of [
    ['lab', 'start', '--backend', 'simulated', '--nodes', '1', '--sites', '2', '--time-scale', '0.01', '--auth-fail-delay', '10'],
    ['deploy', '--all', '--image', '2026.1.0', '--yes', '-i', labInventory],
    ['rollout', 'stage', '2026.2.0', '--all', '-i', labInventory],
  ]) {
    const r = await runPgi(args, env)
    expect(r.code, describeRun(args, r)).toBe(0)
  }
  uai = /uai: (\w+)/.exec(await readFile(labInventory, 'utf8'))![1]!
  // a node that accepts connections (TLS included, with the node's own certificate) and never answers
  const [cert, key] = await Promise.all([readFile(join(lab, 'nodes', 'lab1', 'pve-ssl.pem')), readFile(join(lab, 'nodes', 'lab1', 'pve-ssl.key'))])
  dead = createTlsServer({cert, key}, (s) => {
    deadSockets.add(s)
    s.on('close', () => deadSockets.delete(s))
    s.on('error', () => undefined)
  })
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()))
}, 10 * 60_000)

afterAll(async () => {
  for (const s of deadSockets) s.destroy()
  await new Promise<void>((r) => (dead ? dead.close(() => r()) : r()))
  if (env) await runPgi(['lab', 'stop'], env)
  if (base) await rm(base, {recursive: true, force: true})
})

/** The lab's inventory with its one hypervisor reached through `change`. */
async function brokenInventory(name: string, change: (yaml: string) => string): Promise<string> {
  const file = join(base, `${name}.yaml`)
  await writeFile(file, change(await readFile(labInventory, 'utf8')))
  return file
}

const COMMANDS = (inv: string): string[][] => [
  ['deploy', '--all', '--dry-run', '-i', inv],
  ['deploy', '--all', '--yes', '-i', inv],
  ['status', '-i', inv],
  ['rollout', 'status', '-i', inv],
  ['rollout', 'plan', '2026.2.0', '--all', '-i', inv],
  ['rollout', 'start', '2026.2.0', '--all', '--yes', '-i', inv],
  ['credentials', 'rotate', uai, '--yes', '-i', inv],
  ['credentials', 'handoff', uai, '-i', inv],
  ['destroy', uai, '--destroy-data', '--yes', '-i', inv],
  ['inventory', 'trust', 'lab1', '-i', inv],
]

/**
 * Runs every command, half of them with --json (the other half in the next case: each command is
 * run both ways over the cases); returns what went wrong (empty when each ended in time and named
 * its failure).
 */
async function runAll(inv: string, expectText: RegExp, jsonFirst: boolean): Promise<string[]> {
  const problems: string[] = []
  for (const [i, args] of COMMANDS(inv).entries()) {
    {
      const json = (i % 2 === 0) === jsonFirst
      const a = json ? [...args, '--json'] : args
      const r: CliRun = await runPgi(a, env, {killAfterMs: 90_000})
      if (process.env.PGI_E2E_TIMINGS) console.log(`${a.slice(0, -2).join(' ')} → exit ${r.code}, ${r.ms} ms, ${r.afterLastOutputMs} ms after the last output`)
      const out = r.stdout + r.stderr
      if (r.code === null) problems.push(`did not exit (killed): ${describeRun(a, r)}`)
      else if (r.afterLastOutputMs > EXIT_AFTER_OUTPUT_MS) problems.push(`exited ${r.afterLastOutputMs} ms after its last output: ${describeRun(a, r)}`)
      else if (r.ms > RUN_BOUND_MS) problems.push(`took ${r.ms} ms: ${describeRun(a, r)}`)
      if (/PGI_INTERNAL|    at .*\.js:\d+/.test(out)) problems.push(`internal error or stack trace: ${describeRun(a, r)}`)
      const needsHypervisor = !['handoff', 'trust'].includes(args[1]!)
      if (needsHypervisor && r.code === 0) problems.push(`exit 0 although its hypervisor failed: ${describeRun(a, r)}`)
      if (needsHypervisor && !expectText.test(out)) problems.push(`does not say what failed (${expectText}): ${describeRun(a, r)}`)
      if (json && r.json === undefined) problems.push(`--json printed no JSON envelope: ${describeRun(a, r)}`)
    }
  }
  return problems
}

describe('pgi ends with its output after a hypervisor failure (bin/run.js, simulated lab)', () => {
  it('the certificate does not match the pinned fingerprint', async () => {
    const inv = await brokenInventory('wrong-pin', (y) => y.replace(/fingerprint: (..)/, (_m, b: string) => `fingerprint: ${b === 'AA' ? 'BB' : 'AA'}`))
    expect(await runAll(inv, /does not match the pinned fingerprint|PGI_TLS_MISMATCH/, true)).toEqual([])
  }, 20 * 60_000)

  it('the connection is refused', async () => {
    const port = await freePort()
    const inv = await brokenInventory('refused', (y) => y.replace(/url: https:\/\/127\.0\.0\.1:\d+/, `url: https://127.0.0.1:${port}`))
    expect(await runAll(inv, /ECONNREFUSED|connection refused/i, false)).toEqual([])
  }, 20 * 60_000)

  it('the node accepts connections and never answers', async () => {
    const port = (dead.address() as {port: number}).port
    const inv = await brokenInventory('dead', (y) => y.replace(/url: https:\/\/127\.0\.0\.1:\d+/, `url: https://127.0.0.1:${port}`))
    expect(await runAll(inv, /no answer to .* within|timeout after|not reachable/i, true)).toEqual([])
  }, 20 * 60_000)
})
