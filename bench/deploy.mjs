#!/usr/bin/env node
// bench/deploy: wall time of deploying 200 establishments over 20 nodes of a simulated lab (the
// lab daemon in its own process, real HTTPS, the simulated backend's realistic task durations
// scaled by --time-scale), against the ideal: the longest per-site chain × the number of waves
// (ceil(sites / --max-parallel)). The per-site chain is measured, not assumed: one establishment
// deployed alone on an idle one-node lab (staging included), the longest of --calibrations runs.
// Target: ratio <= 1.2.
//
// The image is a random file staged like a real one (upload, sha256 checked by the lab); its
// signature is not what is measured (deploy's resolveImage is given the verified description).
//
// Needs a build (`npm run build`). Usage: node bench/deploy.mjs [--nodes 20] [--sites 200]
//   [--max-parallel 40] [--max-per-hypervisor 4] [--time-scale 0.2] [--calibrations 3]
// Last line: one JSON object.
import {createHash, randomBytes} from 'node:crypto'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {cpus, tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const dist = (p) => join(root, 'dist', 'src', p)

const {values: a} = parseArgs({
  options: {
    nodes: {type: 'string', default: '20'},
    sites: {type: 'string', default: '200'},
    'max-parallel': {type: 'string', default: '40'},
    'max-per-hypervisor': {type: 'string', default: '4'},
    'time-scale': {type: 'string', default: '0.2'},
    calibrations: {type: 'string', default: '3'},
    'image-mib': {type: 'string', default: '8'},
  },
})
const nodes = Number(a.nodes)
const sites = Number(a.sites)
const maxParallel = Number(a['max-parallel'])
const maxPerHv = Number(a['max-per-hypervisor'])
const timeScale = Number(a['time-scale'])

const {startLab, stopLab} = await import(dist('lab/lab.js'))
const {runDeploy} = await import(dist('deploy/service.js'))
const {connectHypervisor} = await import(dist('proxmox/client.js'))
const {MemoryIo} = await import(dist('io.js'))

const work = await mkdtemp(join(tmpdir(), 'pgi-bench-deploy-'))
const env = {...process.env, PGI_STATE_DIR: join(work, 'state'), CI: 'true', PGI_LOG_LEVEL: 'error'}
delete env.PGI_INVENTORY

const bytes = randomBytes(Number(a['image-mib']) * 1024 * 1024)
const imagePath = join(work, 'pgi-tryton-2026.11.0.qcow2')
await writeFile(imagePath, bytes)
const image = {name: 'pgi-tryton', version: '2026.11.0', file: 'pgi-tryton-2026.11.0.qcow2', path: imagePath, sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length}

// Every wait scales like the durations: the client's task polling (default 500 ms growing to 5 s)
// and deploy's agent/health polling (3 s) times --time-scale, so the lab and the client see the
// same request rates per second of simulated work as with a real PVE.
const pollMs = Math.max(5, Math.round(3000 * timeScale))
const connect = (hv, o) => connectHypervisor(hv, {tokenSecret: o.tokenSecret, io: o.io, poll: {initialMs: Math.max(5, Math.round(500 * timeScale)), maxMs: Math.max(20, Math.round(5000 * timeScale))}})

async function deployOnLab(name, nodeCount, siteCount) {
  const dir = join(work, name)
  const lab = await startLab({dir, nodes: nodeCount, sites: siteCount, backend: 'simulated', timeScale, authFailDelayMs: 10, env, io: new MemoryIo('silent')})
  try {
    const io = new MemoryIo('silent')
    const t0 = performance.now()
    const report = await runDeploy({
      inventoryPath: lab.inventory,
      selection: {all: true},
      secretsDir: lab.secretsDir,
      image: image.version,
      resolveImage: async () => image,
      handoffDir: join(dir, 'handoffs'),
      maxParallel,
      maxPerHypervisor: maxPerHv,
      pollIntervalMs: pollMs,
      agentTimeoutMs: 600_000,
      healthTimeoutMs: 600_000,
      io,
      env,
      connect,
      confirm: async () => undefined,
    })
    const wallMs = performance.now() - t0
    const outcomes = report.result.outcomes
    const failed = outcomes.filter((o) => o.outcome !== 'created')
    if (failed.length > 0) throw new Error(`${failed.length} establishment(s) not created: ${failed.slice(0, 3).map((o) => `${o.uai}: ${o.detail}`).join('; ')}`)
    return {wallMs, durations: outcomes.map((o) => o.durationMs)}
  } finally {
    await stopLab({dir, env})
  }
}

try {
  const chains = []
  for (let i = 0; i < Number(a.calibrations); i++) chains.push((await deployOnLab(`calibration-${i}`, 1, 1)).wallMs)
  const chainMs = Math.max(...chains)
  const waves = Math.ceil(sites / maxParallel)
  const idealMs = chainMs * waves
  const run = await deployOnLab('fleet', nodes, sites)
  const sorted = [...run.durations].sort((x, y) => x - y)
  const result = {
    bench: 'deploy',
    sites,
    nodes,
    maxParallel,
    maxPerHypervisor: maxPerHv,
    timeScale,
    cpus: cpus().length,
    chainMs: Math.round(chainMs),
    waves,
    idealMs: Math.round(idealMs),
    wallMs: Math.round(run.wallMs),
    ratio: Number((run.wallMs / idealMs).toFixed(3)),
    target: 1.2,
    ok: run.wallMs / idealMs <= 1.2,
    perSiteMs: {p50: Math.round(sorted[Math.floor(sorted.length / 2)]), max: Math.round(sorted[sorted.length - 1])},
  }
  console.log(`deploy of ${sites} establishments over ${nodes} nodes: ${(run.wallMs / 1000).toFixed(1)} s; ideal ${waves} waves × ${(chainMs / 1000).toFixed(2)} s = ${(idealMs / 1000).toFixed(1)} s; ratio ${result.ratio}`)
  console.log(JSON.stringify(result))
} finally {
  await rm(work, {recursive: true, force: true})
}
