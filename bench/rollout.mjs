#!/usr/bin/env node
// bench/rollout: wall time of rolling a new image version out to 500 establishments of a
// simulated lab (the same lab as test/unit/rollout: deploy's test lab over the rollout guest
// model, real HTTPS API and client, the simulated backend's realistic task durations — import
// 20 s, boot 15 s, shutdown 4 s… — scaled by --time-scale), in waves canary (1 %), pilot (9 %),
// general (90 %), against the ideal for those waves and that parallelism:
//   ideal = Σ over waves of  max(ceil(n / max-parallel), max over hypervisors ceil(n_hv / per-hv)) × chain
// where `chain` is one establishment's full rollout measured alone on the idle lab (calibration,
// the longest of --calibrations runs). Target: ratio <= 1.15.
// The lab runs in its own process (this file with --lab-child), as real hypervisors are other
// machines: the CPU figures are pgi's own (this process) and the lab's (the child), per
// establishment, separately.
//
// The lab helpers are TypeScript test code: they are compiled with tsc into
// node_modules/.cache/pgi-bench-rollout first (about 15 s).
// Usage: node bench/rollout.mjs [--nodes 50] [--sites 500] [--max-parallel 50]
//   [--max-per-hypervisor 2] [--time-scale 0.25] [--calibrations 2]
// Last line: one JSON object.
import {execFileSync, fork} from 'node:child_process'
import {cpus} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath, pathToFileURL} from 'node:url'
import {parseArgs} from 'node:util'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const {values: a} = parseArgs({
  options: {
    nodes: {type: 'string', default: '50'},
    sites: {type: 'string', default: '500'},
    'max-parallel': {type: 'string', default: '50'},
    'max-per-hypervisor': {type: 'string', default: '2'},
    'time-scale': {type: 'string', default: '0.25'},
    calibrations: {type: 'string', default: '2'},
    'lab-child': {type: 'boolean'},
  },
})
const nodes = Number(a.nodes)
const perNode = Math.ceil(Number(a.sites) / nodes)
const maxParallel = Number(a['max-parallel'])
const perHv = Number(a['max-per-hypervisor'])
const timeScale = Number(a['time-scale'])

const out = join(root, 'node_modules', '.cache', 'pgi-bench-rollout')
if (!process.argv.includes('--lab-child')) {
  process.stderr.write('compiling the lab helpers…\n')
  try {
    execFileSync(join(root, 'node_modules', '.bin', 'tsc'), ['--outDir', out, '--rootDir', root, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--lib', 'ES2023', '--skipLibCheck', '--esModuleInterop', '--resolveJsonModule', join(root, 'test/unit/rollout/lab.ts')], {stdio: ['ignore', 'ignore', 'inherit']})
  } catch {
    // tsc exits non-zero on type errors elsewhere in the tree but still emits: use what it wrote
  }
}
const mod = (p) => import(pathToFileURL(join(out, p)).href)
const {startRolloutLab} = await mod('test/unit/rollout/lab.js')
const {startRollout} = await mod('src/rollout/service.js')
const {MemoryIo} = await mod('src/io.js')
const {connectHypervisor} = await mod('src/proxmox/client.js')

function percentiles(xs) {
  const s = [...xs].sort((x, y) => x - y)
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))]
  return {p50: at(0.5), p90: at(0.9), max: s.at(-1)}
}

process.env.CI = 'true'
const total = nodes * perNode
// rings: 1 % canary, 9 % pilot, the rest general, spread over the nodes as a Région would pick
// them (establishment i is the (i mod perNode)-th of node floor(i / perNode))
const ring = (i) => {
  const j = (i % perNode) * nodes + Math.floor(i / perNode)
  return j < total / 100 ? 'canary' : j < total / 10 ? 'pilot' : 'general'
}

if (process.argv.includes('--lab-child')) {
  // The lab process: deploys the fleet at 2026.11.0, stages 2026.12.0, hands the parent what a
  // runner needs (inventory, secret store, environment, images), answers CPU questions, stops.
  process.stderr.write(`deploying ${total} establishments on ${nodes} nodes (time scale ${timeScale})…\n`)
  const lab = await startRolloutLab({nodes, perNode, rings: ring, timeScale, deployParallel: 100})
  await lab.stage('2026.12.0')
  process.on('message', async (m) => {
    if (m === 'cpu') process.send({cpu: process.cpuUsage()})
    if (m === 'stop') {
      await lab.close()
      process.exit(0)
    }
  })
  process.send({ready: {dir: lab.dir, inventory: lab.inventory, secretsDir: lab.store.dir, env: lab.env, images: [...lab.images]}})
} else {
  const child = fork(fileURLToPath(import.meta.url), [...process.argv.slice(2), '--lab-child'], {serialization: 'advanced', stdio: ['ignore', 'ignore', 'inherit', 'ipc']})
  const next = () => new Promise((res, rej) => {
    child.once('message', res)
    child.once('exit', (code) => rej(new Error(`the lab process exited (${code})`)))
  })
  const {ready: L} = await next()
  const labCpu = async () => {
    child.send('cpu')
    return (await next()).cpu
  }
  const images = new Map(L.images)
  const resolveImage = async (ref) => {
    const i = images.get(ref.version)
    if (!i) throw new Error(`image ${ref.name} ${ref.version} not built`)
    return i
  }
  try {
    await main(L, resolveImage, labCpu)
  } finally {
    child.send('stop')
    await new Promise((r) => child.once('exit', r))
  }
}

async function main(lab, resolveImage, labCpu) {
  const io = new MemoryIo('warn')
  // Every wait scales like the durations (as in bench/deploy): the client's task polling (default
  // 500 ms growing to 5 s), its retry back-off (1 s to 15 s) and the rollout's own polling (default
  // 5 s) times --time-scale, so the lab and pgi see the request rate of a real fleet per second of
  // simulated work, not a faster one.
  const scaled = (ms, min) => Math.max(min, Math.round(ms * timeScale))
  const connect = (hv, o) => connectHypervisor(hv, {...o, poll: {initialMs: scaled(500, 5), maxMs: scaled(5000, 20)}, retry: {baseDelayMs: scaled(1000, 20), maxDelayMs: scaled(15_000, 100)}})
  const request = (version, over) => ({
    inventoryPath: lab.dir,
    inventory: lab.inventory,
    selection: {all: true},
    secretsDir: lab.secretsDir,
    io,
    env: lab.env,
    connect,
    requestTimeoutMs: 60_000,
    image: {name: 'pgi-tryton', version},
    resolveImage,
    confirm: async () => undefined,
    pollIntervalMs: scaled(5000, 20),
    agentTimeoutMs: 600_000,
    healthTimeoutMs: 600_000,
    shutdownTimeoutMs: 5000,
    ...over,
  })
  // calibration: one establishment alone, the longest of N (each a different site, lab idle)
  const calib = lab.inventory.establishments.filter((e) => e.ring === 'general').slice(-Number(a.calibrations))
  let chain = 0
  for (const e of calib) {
    const t0 = Date.now()
    const r = await startRollout(request('2026.12.0', {selection: {uais: [e.uai]}, maxParallel: 1, maxPerHypervisor: 1}))
    if (r.establishments[0].outcome !== 'updated') throw new Error(`calibration failed: ${JSON.stringify(r.establishments[0])}`)
    chain = Math.max(chain, Date.now() - t0)
  }
  const calibrated = new Set(calib.map((e) => e.uai))
  const sel = lab.inventory.establishments.filter((e) => !calibrated.has(e.uai))
  let ideal = 0
  for (const w of ['canary', 'pilot', 'general']) {
    const inWave = sel.filter((e) => e.ring === w)
    if (inWave.length === 0) continue
    const byHv = new Map()
    for (const e of inWave) byHv.set(e.hypervisor, (byHv.get(e.hypervisor) ?? 0) + 1)
    const rounds = Math.max(Math.ceil(inWave.length / maxParallel), ...[...byHv.values()].map((n) => Math.ceil(n / perHv)))
    ideal += rounds * chain
  }
  const cpu0 = process.cpuUsage()
  const lab0 = await labCpu()
  const t0 = Date.now()
  const r = await startRollout(request('2026.12.0', {selection: {uais: sel.map((e) => e.uai)}, maxParallel, maxPerHypervisor: perHv}))
  const wall = Date.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const lab1 = await labCpu()
  const ms = (u) => (u.user + u.system) / 1000
  const cpuMs = ms(cpu)
  const labCpuMs = ms(lab1) - ms(lab0)
  const result = {
    bench: 'rollout',
    machine: {cpus: cpus().length, model: cpus()[0]?.model},
    nodes,
    establishments: sel.length,
    waves: {canary: sel.filter((e) => e.ring === 'canary').length, pilot: sel.filter((e) => e.ring === 'pilot').length, general: sel.filter((e) => e.ring === 'general').length},
    maxParallel,
    maxPerHypervisor: perHv,
    timeScale,
    chainMs: chain,
    idealMs: ideal,
    wallMs: wall,
    ratio: Math.round((wall / ideal) * 1000) / 1000,
    target: 1.15,
    outcomes: r.counts,
    cpuMsPerEstablishment: {pgi: Math.round((cpuMs / sel.length) * 10) / 10, lab: Math.round((labCpuMs / sel.length) * 10) / 10},
    // each establishment's own chain inside the fleet run, to compare with chainMs (alone)
    perSiteMs: percentiles(r.establishments.map((x) => x.durationMs)),
  }
  console.log(JSON.stringify(result))
}
