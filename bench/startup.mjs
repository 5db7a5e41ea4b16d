#!/usr/bin/env node
// Start-up benchmark (run after `npm run build`): median wall time of
//   pgi --version
//   pgi inventory validate -i inventory/example
//   pgi inventory validate -i <generated inventory of 1,000 establishments on 20 hypervisors>
// Targets on the reference machine: 250 ms, 400 ms, 1.5 s. Last line: one JSON object.
//
//   node bench/startup.mjs [--runs 15] [--establishments 1000] [--hypervisors 20]
import {spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {cpus, loadavg, tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const {values} = parseArgs({
  options: {
    runs: {type: 'string', default: '15'},
    establishments: {type: 'string', default: '1000'},
    hypervisors: {type: 'string', default: '20'},
  },
})
const RUNS = Number(values.runs)
const N = Number(values.establishments)
const H = Number(values.hypervisors)
const TARGETS_MS = {version: 250, validate_example: 400, validate_generated: 1500}

const bin = join(root, 'bin', 'run.js')
if (!existsSync(join(root, 'dist', 'src', 'inventory', 'uai.js')) || !existsSync(join(root, 'dist', 'cli', 'main.js'))) {
  console.error('bench/startup: run `npm run build` first')
  process.exit(1)
}
const manifest = existsSync(join(root, 'oclif.manifest.json'))
if (!manifest) console.error('warning: oclif.manifest.json is missing: start-up is slower without it (npm run build writes it)')
const validatorBuilt = existsSync(join(root, 'dist', 'src', 'inventory', 'schema-validator.cjs'))
if (!validatorBuilt) console.error('warning: the precompiled schema validator is missing (npm run build writes it)')

const {uaiFromNumber} = await import(join(root, 'dist', 'src', 'inventory', 'uai.js'))

/** A valid inventory of n establishments spread over h single-node hypervisors, split in files. */
function generateInventory(dir, n, h) {
  const fp = Array.from({length: 32}, (_, i) => ((i * 37 + 11) % 256).toString(16).toUpperCase().padStart(2, '0')).join(':')
  const age = 'age1ppm2jlw8edhgt99e7furp5wjdd4gyrlv5ndarvv4npp3g67wzceqdhdjyx'
  writeFileSync(
    join(dir, 'region.yaml'),
    `region: Bench\nrings: [canary, pilot, general]\ndefaults:\n  academie: Bench\n  image: "2026.11.0"\n  network: {dns: [10.255.0.53]}\n  maintenance_window: {days: [wed, sat], start: "12:00", end: "14:00"}\ngroups:\n  first-ten: [${Array.from({length: Math.min(10, n)}, (_, i) => uaiFromNumber(130000 + i)).join(', ')}]\n`,
  )
  let hv = 'hypervisors:\n'
  for (let j = 0; j < h; j++) {
    hv += `  hv-${j}:\n    url: https://10.${j}.0.2:8006\n    nodes: [pve-${j}]\n    tls: {fingerprint: "${fp}"}\n    token: {id: pgi@pve!deploy, secret: {store: hypervisors/hv-${j}/token}}\n    storage: {os: local-lvm, data: local-lvm, import: local}\n`
  }
  writeFileSync(join(dir, 'hypervisors.yaml'), hv)
  mkdirSync(join(dir, 'establishments'))
  for (let j = 0; j < h; j++) {
    let text = 'establishments:\n'
    for (let i = j; i < n; i += h) {
      const k = Math.floor(i / h)
      text += `  - uai: ${uaiFromNumber(130000 + i)}\n    name: Lycée ${i}\n    hypervisor: hv-${j}\n    vmid: ${1000 + k}\n    ring: ${i % 50 === 0 ? 'canary' : i % 10 === 0 ? 'pilot' : 'general'}\n    network: {address: 10.${j}.${k}.10/24, gateway: 10.${j}.${k}.1}\n    ami: {name: AMI ${i}, email: ami${i}@example.org, age_recipient: ${age}}\n`
    }
    writeFileSync(join(dir, 'establishments', `hv-${String(j).padStart(2, '0')}.yaml`), text)
  }
}

/** CPU time (user + system, ms) of this process's waited-for children, from /proc (Linux; 10 ms ticks). */
function childrenCpuMs() {
  try {
    const f = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')
    return (Number(f[13]) + Number(f[14])) * 10 // cutime + cstime, in USER_HZ (100/s)
  } catch {
    return Number.NaN
  }
}

/** Wall time and CPU time of one run. CPU time says how much of the wall time is pgi's own work when the machine is busy. */
function timeRun(args, cmd = [bin, ...args]) {
  const c0 = childrenCpuMs()
  const t0 = process.hrtime.bigint()
  const r = spawnSync(process.execPath, cmd, {cwd: root, encoding: 'utf8', env: {...process.env, CI: 'true'}})
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  if (r.status !== 0) throw new Error(`pgi ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`)
  return {ms, cpu: childrenCpuMs() - c0}
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

const cpuMedians = {}
function bench(name, args, key, cmd) {
  timeRun(args, cmd) // warm the file system cache
  const runs = Array.from({length: RUNS}, () => timeRun(args, cmd))
  const times = runs.map((r) => r.ms)
  const med = median(times)
  cpuMedians[key] = Math.round(median(runs.map((r) => r.cpu)))
  console.error(`${name.padEnd(20)} median ${med.toFixed(0)} ms  (min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)}, cpu ${cpuMedians[key]} ms, ${RUNS} runs)`)
  return Math.round(med)
}

const dir = mkdtempSync(join(tmpdir(), 'pgi-bench-inventory-'))
try {
  generateInventory(dir, N, H)
  const loadBefore = loadavg()[0]
  // bare `node -e 0`: the floor every figure includes (tells how loaded the machine is)
  const nodeBaseline = bench('node -e 0 (floor)', ['-e', '0'], 'node_floor', ['-e', '0'])
  const results = {
    version: bench('--version', ['--version'], 'version'),
    validate_example: bench('validate example', ['inventory', 'validate', '-i', join(root, 'inventory', 'example')], 'validate_example'),
    validate_generated: bench(`validate ${N}`, ['inventory', 'validate', '-i', dir], 'validate_generated'),
  }
  const pass = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v <= TARGETS_MS[k]]))
  console.log(
    JSON.stringify({
      bench: 'startup',
      runs: RUNS,
      establishments: N,
      hypervisors: H,
      median_ms: results,
      median_cpu_ms: cpuMedians,
      node_floor_ms: nodeBaseline,
      target_ms: TARGETS_MS,
      pass,
      all_pass: Object.values(pass).every(Boolean),
      manifest,
      precompiled_validator: validatorBuilt,
      load_avg_1m: [Number(loadBefore.toFixed(2)), Number(loadavg()[0].toFixed(2))],
      node: process.version,
      cpus: cpus().length,
      cpu: cpus()[0]?.model,
    }),
  )
} finally {
  rmSync(dir, {recursive: true, force: true})
}
