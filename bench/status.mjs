#!/usr/bin/env node
// bench/status: wall time of `pgi status --all --json` on a simulated lab of 500 establishments
// over 50 nodes where every API request takes 20 ms (lab latency fault), then the same with one
// node that accepts connections but never answers (lab dead-node fault).
// Targets: <= 3 s, and <= 3 s + the per-request timeout with the hanging node.
// Then the marginal CPU of pgi per API request: `pgi status --all --json` at 0 ms latency on 50 and
// on 500 sites (same node count); (CPU at 500 − CPU at 50) / (requests at 500 − requests at 50),
// which leaves out start-up, inventory and TLS set-up. Target <= 0.5 ms. The CLI's CPU (user +
// system) and its request count are taken inside it by a preloaded script (bench/cpu-probe.cjs:
// process.cpuUsage() at exit, undici's `undici:request:create` diagnostics channel).
//
// The VMs are created through the PveApi (src/proxmox/client.ts) with the metadata deploy writes
// (tags + pgi-meta description, src/fleet/vm-meta.ts), not through `pgi deploy`: the bench
// measures status, and populating 500 VMs must take seconds.
//
// Needs a build (`npm run build`). Usage: node bench/status.mjs [--nodes 50] [--sites 500]
//   [--latency-ms 20] [--timeout 5] [--runs 3]. Last line: one JSON object.
import {spawn} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const dist = (p) => join(root, 'dist', 'src', p)

const {values: a} = parseArgs({
  options: {
    nodes: {type: 'string', default: '50'},
    sites: {type: 'string', default: '500'},
    'latency-ms': {type: 'string', default: '20'},
    timeout: {type: 'string', default: '5'},
    runs: {type: 'string', default: '3'},
    'marginal-small': {type: 'string', default: '50'},
    'marginal-runs': {type: 'string', default: '5'},
    // only the marginal-CPU part (skips the wall-time scenarios)
    'marginal-only': {type: 'boolean', default: false},
    // leave a populated, answering lab running in DIR and exit (for profiling `pgi status` by hand)
    keep: {type: 'string'},
  },
})
const nodes = Number(a.nodes)
const sites = Number(a.sites)
const latencyMs = Number(a['latency-ms'])
const timeoutS = Number(a.timeout)
const runs = Number(a.runs)

const {startLab, stopLab} = await import(dist('lab/lab.js'))
const {NO_FAULTS} = await import(dist('lab/faults.js'))
const {loadValidInventory} = await import(dist('inventory/load.js'))
const {SecretStore} = await import(dist('secrets/store.js'))
const {Hypervisors} = await import(dist('hypervisors.js'))
const {connectHypervisor} = await import(dist('proxmox/client.js'))
const {formatDescription, formatTags} = await import(dist('fleet/vm-meta.js'))
const {MemoryIo} = await import(dist('io.js'))

const work = await mkdtemp(join(tmpdir(), 'pgi-bench-status-'))
const env = {...process.env, PGI_STATE_DIR: join(work, 'state'), CI: 'true', PGI_LOG_LEVEL: 'error'}
delete env.PGI_INVENTORY

function median(xs) {
  const s = [...xs].sort((x, y) => x - y)
  return s[Math.floor(s.length / 2)]
}

/** Population is not what is measured: on a loaded machine a request may fail; look again and redo. */
async function withRetry(api, e, f) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await f()
    } catch (err) {
      if (attempt >= 4) throw err
      process.stderr.write(`populate ${e.uai}: ${err.message.split('\n')[0]}; again (${attempt})\n`)
      await new Promise((r) => setTimeout(r, 500 * attempt))
    }
  }
}

/** Creates and starts every establishment's VM (on answering nodes) with deploy's metadata. */
async function populate(inventoryPath, secretsDir, dead) {
  const inv = await loadValidInventory(inventoryPath)
  const store = await SecretStore.open({dir: secretsDir, recipients: inv.recipients.map((r) => r.key), env})
  const io = new MemoryIo('silent')
  const hvs = new Hypervisors(inv, {store, io, env, connect: (hv, o) => connectHypervisor(hv, {tokenSecret: o.tokenSecret, io, poll: {initialMs: 5, maxMs: 50}})})
  const byHv = new Map()
  for (const e of inv.establishments) if (!dead.includes(e.node)) byHv.set(e.hypervisor, [...(byHv.get(e.hypervisor) ?? []), e])
  const t0 = performance.now()
  const apis = []
  await Promise.all(
    [...byHv].map(async ([name, list]) => {
      const api = await hvs.get(name)
      apis.push(api)
      for (let i = 0; i < list.length; i += 4) {
        await Promise.all(
          list.slice(i, i + 4).map((e) => withRetry(api, e, async () => {
            const meta = {v: 1, uai: e.uai, image: e.image ?? '2026.11.0', deployedAt: new Date().toISOString(), by: 'bench/status'}
            if (!(await api.vmStatus(e.node, e.vmid))) await api.createVm(e.node, e.vmid, {
              name: `pgi-${e.uai.toLowerCase()}`,
              cores: 1,
              memory: 1024,
              agent: 1,
              virtio0: 'local-vm:4',
              virtio1: `local-vm:${e.dataDiskGb},serial=pgi-data`,
              net0: 'virtio,bridge=vmbr0',
              tags: formatTags(meta, e.ring),
              description: formatDescription(meta, e.name),
            })
            if ((await api.vmStatus(e.node, e.vmid))?.status !== 'running') await api.startVm(e.node, e.vmid)
          })),
        )
      }
    }),
  )
  await Promise.all(apis.map((x) => x.close?.()))
  return Math.round(performance.now() - t0)
}

/**
 * One `pgi status --all --json` run as a child process: wall time and the verdict counts; with
 * `probe`, also its CPU (ms, user + system) and the number of HTTP requests it made.
 */
function statusRun(inventoryPath, secretsDir, probe = false) {
  return new Promise((resolveP, reject) => {
    const t0 = performance.now()
    const probeFile = join(work, `cpu-${process.hrtime.bigint()}.json`)
    const childEnv = probe ? {...env, NODE_OPTIONS: `${env.NODE_OPTIONS ?? ''} --require ${join(root, 'bench', 'cpu-probe.cjs')}`.trim(), PGI_BENCH_CPU_FILE: probeFile} : env
    const child = spawn(process.execPath, [join(root, 'bin', 'run.js'), 'status', '--all', '--json', '-i', inventoryPath, '--secrets-dir', secretsDir, '--timeout', String(timeoutS)], {env: childEnv, stdio: ['ignore', 'pipe', 'pipe']})
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('error', reject)
    child.on('close', (code) => {
      const ms = Math.round(performance.now() - t0)
      try {
        const env = JSON.parse(out)
        const cpu = probe ? JSON.parse(readFileSync(probeFile, 'utf8')) : undefined
        resolveP({ms, exit: code, summary: env.result?.summary ?? env.error, ...(cpu ? {cpuMs: cpu.cpuMs, requests: cpu.requests} : {})})
      } catch {
        reject(new Error(`pgi status printed no JSON (exit ${code}): ${err.slice(-2000)}`))
      }
    })
  })
}

async function scenario(name, deadNodes) {
  const dir = join(work, name)
  const faults = {...NO_FAULTS, seed: 7, latencyMs: {min: latencyMs, max: latencyMs}, deadNodes}
  const lab = await startLab({dir, nodes, sites, backend: 'simulated', timeScale: 0, authFailDelayMs: 0, faults, env, readyTimeoutMs: 120_000})
  try {
    const populateMs = await populate(lab.inventory, lab.secretsDir, deadNodes)
    const times = []
    let last
    for (let i = 0; i < runs; i++) {
      last = await statusRun(lab.inventory, lab.secretsDir)
      times.push(last.ms)
      process.stderr.write(`${name}: run ${i + 1}: ${last.ms} ms, exit ${last.exit}, ${JSON.stringify(last.summary)}\n`)
    }
    return {populateMs, medianMs: median(times), runsMs: times, exit: last.exit, summary: last.summary}
  } finally {
    await stopLab({dir, env}).catch(() => undefined)
  }
}

if (a.keep) {
  const dir = resolve(a.keep)
  const faults = {...NO_FAULTS, seed: 7, latencyMs: {min: latencyMs, max: latencyMs}, deadNodes: []}
  const keepEnv = {...env, PGI_STATE_DIR: join(dir, 'state')}
  Object.assign(env, keepEnv)
  const lab = await startLab({dir: join(dir, 'lab'), nodes, sites, backend: 'simulated', timeScale: 0, authFailDelayMs: 0, faults, env, readyTimeoutMs: 120_000})
  await populate(lab.inventory, lab.secretsDir, [])
  console.log(JSON.stringify({kept: dir, inventory: lab.inventory, secretsDir: lab.secretsDir, stateDir: keepEnv.PGI_STATE_DIR}))
  process.exit(0)
}

/** CPU and requests of `pgi status --all --json` on `n` sites at 0 ms latency (median CPU of the runs). */
async function cpuAt(n, runsN) {
  const dir = join(work, `cpu-${n}`)
  const lab = await startLab({dir, nodes, sites: n, backend: 'simulated', timeScale: 0, authFailDelayMs: 0, faults: {...NO_FAULTS, seed: 7}, env, readyTimeoutMs: 120_000})
  try {
    await populate(lab.inventory, lab.secretsDir, [])
    const cpu = []
    let requests
    let last
    for (let i = 0; i < runsN; i++) {
      last = await statusRun(lab.inventory, lab.secretsDir, true)
      cpu.push(last.cpuMs)
      if (requests !== undefined && requests !== last.requests) process.stderr.write(`cpu ${n}: run ${i + 1} made ${last.requests} requests (first run: ${requests})\n`)
      requests ??= last.requests
      process.stderr.write(`cpu ${n} sites: run ${i + 1}: ${last.ms} ms wall, ${last.cpuMs} ms CPU, ${last.requests} requests, exit ${last.exit}\n`)
    }
    return {sites: n, cpuMs: median(cpu), cpuRunsMs: cpu, requests, exit: last.exit}
  } finally {
    await stopLab({dir, env}).catch(() => undefined)
  }
}

async function marginal() {
  const small = await cpuAt(Number(a['marginal-small']), Number(a['marginal-runs']))
  const large = await cpuAt(sites, Number(a['marginal-runs']))
  const perRequestMs = Math.round(((large.cpuMs - small.cpuMs) / (large.requests - small.requests)) * 1000) / 1000
  return {latencyMs: 0, small, large, perRequestMs, targetMs: 0.5, ok: perRequestMs <= 0.5}
}

try {
  if (a['marginal-only']) {
    console.log(JSON.stringify({bench: 'status', command: 'pgi status --all --json', nodes, marginalCpu: await marginal()}))
    process.exit(0)
  }
  const healthy = await scenario('all-answering', [])
  const hanging = await scenario('one-node-hanging', ['lab7'])
  const marginalCpu = await marginal()
  const result = {
    bench: 'status',
    command: 'pgi status --all --json',
    nodes,
    sites,
    latencyMs,
    requestTimeoutS: timeoutS,
    runs,
    population: 'PveApi createVm+startVm with deploy metadata (not pgi deploy)',
    allAnswering: {medianMs: healthy.medianMs, runsMs: healthy.runsMs, exit: healthy.exit, summary: healthy.summary, targetMs: 3000, ok: healthy.medianMs <= 3000},
    oneNodeHanging: {medianMs: hanging.medianMs, runsMs: hanging.runsMs, exit: hanging.exit, summary: hanging.summary, targetMs: 3000 + timeoutS * 1000, ok: hanging.medianMs <= 3000 + timeoutS * 1000},
    marginalCpu,
    ok: healthy.medianMs <= 3000 && hanging.medianMs <= 3000 + timeoutS * 1000 && marginalCpu.ok,
  }
  console.log(JSON.stringify(result))
} finally {
  await rm(work, {recursive: true, force: true})
}
