#!/usr/bin/env node
// bench/db-class: wall time of `pgi db class` making --students (30) per-student databases from a
// model on a qemu lab (the pgi-tryton image in a real VM, software emulation when KVM does not
// work), as an AMI runs it: the bundled CLI (bin/run.js) in its own process. Target: <= 60 s.
//
// Where the time goes: the CSV check and the upload of the list (host), the engine's own time in
// the VM (its `seconds`: staging copy of the model, users, one CREATE DATABASE … TEMPLATE per
// student), and the rest (the CLI's start, the guest agent's round trips and polling, the
// encrypted passwords file). Also measured: `pgi db list` on the 31 databases, and `pgi db drop`
// of one (its final dump). The host is shared: besides the wall time it reports the host CPU
// seconds the VM's QEMU process spent during the class (`vmHostCpuS`: what the emulated guest
// cost, far less sensitive to other jobs than the wall time), the load average before and after,
// the host's speed before and after (`hostCalibrationMs`: a fixed deflate job; lower is faster)
// and the VM's uptime when the class starts (`vmUptimeS`: a VM just deployed is still finishing
// its boot's work).
//
// Needs root, a build (`npm run build`) and a built image. Without --lab-dir it starts its own
// qemu lab (one VM), deploys --version from --images-dir (default: the newest in <state
// dir>/images) and stops the lab at the end; with --lab-dir DIR it uses that running lab and its
// first establishment (already deployed; PGI_STATE_DIR set to the state dir that started it).
// Its own lab's VM gets a real deploy's vCPUs and memory (the inventory's built-in defaults, 2 and
// 4096 MiB; the lab's generated inventory says 1 and 1024, to keep several VMs on a small host),
// or --cores N / --memory-mb M: QEMU runs one host thread per vCPU, so the host should have that
// many cores free. (With 1024 MiB the guest reclaims ~660 MB of page cache during a class, for
// about the same time: docs/performance.md, db-class.) Usage:
//   node bench/db-class.mjs [--students 30] [--cores N] [--memory-mb M] [--images-dir DIR] [--version V] [--lab-dir DIR] [--keep]
// Last line: one JSON object {"bench":"db-class",...}.
import {mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {cpus, loadavg, tmpdir, totalmem} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

import {parseDocument} from 'yaml'

import {hostCalibrationMs} from './host-speed.js'
import {runPgi} from './pgi-cli.js'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const {values: a} = parseArgs({
  options: {
    students: {type: 'string', default: '30'},
    cores: {type: 'string'},
    'memory-mb': {type: 'string'},
    'images-dir': {type: 'string'},
    version: {type: 'string'},
    'lab-dir': {type: 'string'},
    keep: {type: 'boolean', default: false},
  },
})
const students = Number(a.students)
if ((a.cores !== undefined || a['memory-mb'] !== undefined) && a['lab-dir']) throw new Error('--cores and --memory-mb apply to the lab this bench starts, not to --lab-dir')
const {BUILTIN_DEFAULTS} = await import(join(root, 'dist', 'src', 'inventory', 'rules.js'))
const cores = a.cores === undefined ? BUILTIN_DEFAULTS.cores : Number(a.cores)
if (!(Number.isInteger(cores) && cores >= 1 && cores <= 8)) throw new Error(`--cores ${a.cores}: a whole number from 1 to 8`)
const memoryMb = a['memory-mb'] === undefined ? BUILTIN_DEFAULTS.memoryMb : Number(a['memory-mb'])
if (!(Number.isInteger(memoryMb) && memoryMb >= 512 && memoryMb <= 16384)) throw new Error(`--memory-mb ${a['memory-mb']}: a whole number from 512 to 16384`)
const log = (m) => process.stderr.write(`${m}\n`)
const {imagesDir} = await import(join(root, 'dist', 'src', 'paths.js'))

const work = await mkdtemp(join(tmpdir(), 'pgi-bench-db-class-'))
// with --lab-dir, the state dir of whoever started that lab (PGI_STATE_DIR: its age identity reads
// the lab's secret store); otherwise a fresh one
const stateDir = a['lab-dir'] && process.env.PGI_STATE_DIR ? resolve(process.env.PGI_STATE_DIR) : join(work, 'state')
const env = {...process.env, PGI_STATE_DIR: stateDir, CI: 'true', PGI_LOG_LEVEL: 'warn'}
for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_CLASS_DIR', 'PGI_TOKEN_ID']) delete env[k]

/** Host CPU seconds (user + system) of a process so far, from /proc (clock ticks of 1/100 s). */
async function cpuSeconds(pid) {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}
const load1 = () => Math.round(loadavg()[0] * 100) / 100
/** Seconds since the process started (the VM's uptime, from its QEMU process). */
async function uptimeSeconds(pid) {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const startTicks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19])
  const up = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0])
  return Math.round(up - startTicks / 100)
}

/** Runs bin/run.js (bench/pgi-cli.js; not a benchmark: run-all takes bench/*.mjs) with this bench's environment. */
const pgi = (args, timeoutMs) => runPgi(env, args, timeoutMs)
const must = async (args, timeoutMs) => {
  const r = await pgi(args, timeoutMs)
  if (r.code !== 0) throw new Error(`pgi ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).slice(-2000)}`)
  return r
}

// The guest's own CPU accounting (/proc/stat, all vCPUs summed, seconds), read through the VM's
// guest agent socket: where the VM's time went during the class (user: PostgreSQL and the engine;
// system: the guest kernel's file creation, copies and fsyncs; idle: waiting on the disk or nothing).
async function guestCpu(dir, est) {
  const {QgaClient} = await import('../dist/src/qemu/qga.js')
  try {
    const r = await new QgaClient(join(dir, 'backend', est.node, String(est.vmid), 'qga.sock'), {timeoutMs: 10_000}).run(['/bin/cat', '/proc/stat'], {timeoutMs: 30_000})
    const f = r.stdout.split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    const names = ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal']
    return Object.fromEntries(names.map((n, i) => [n, (f[i] ?? 0) / 100]))
  } catch (e) {
    log(`guest CPU accounting unavailable: ${e.message}`)
    return null
  }
}

let labDir = a['lab-dir'] ? resolve(a['lab-dir']) : join(work, 'lab')
const ownLab = !a['lab-dir']
let result
try {
  if (ownLab) {
    const images = resolve(a['images-dir'] ?? imagesDir(process.env))
    let version = a.version
    if (!version) version = (await readdir(join(images, 'pgi-tryton'))).sort((x, y) => x.localeCompare(y, undefined, {numeric: true})).at(-1)
    log(`starting a qemu lab in ${labDir} and deploying pgi-tryton ${version}`)
    await must(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '1', '--dir', labDir, '--json'], 10 * 60_000)
    env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    // the lab's generated inventory, with the VM's vCPUs changed before the deploy creates it
    const doc = parseDocument(await readFile(env.PGI_INVENTORY, 'utf8'))
    doc.setIn(['defaults', 'cores'], cores)
    doc.setIn(['defaults', 'memory_mb'], memoryMb)
    await writeFile(env.PGI_INVENTORY, doc.toString())
    const uai = (await must(['inventory', 'list', '--json'])).json.result[0].uai
    await must(['deploy', uai, '--yes', '--json', '--image', version, '--images-dir', images, '--lab-dir', labDir, '--handoff-dir', join(work, 'handoffs'), '--health-timeout', '1800', '--agent-timeout', '900'])
  } else {
    env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
  }
  const est = (await must(['inventory', 'list', '--json'])).json.result[0]
  const uai = est.uai
  const inv = parseDocument(await readFile(env.PGI_INVENTORY, 'utf8')).toJS()
  const vmCores = inv.establishments?.find((e) => e.uai === uai)?.cores ?? inv.defaults?.cores
  const vmMemoryMb = inv.establishments?.find((e) => e.uai === uai)?.memory_mb ?? inv.defaults?.memory_mb
  const qemuPid = Number((await readFile(join(labDir, 'backend', est.node, String(est.vmid), 'qemu.pid'), 'utf8')).trim())
  const model = `bench_modele_${Date.now().toString(36)}`
  const created = await must(['db', 'create', uai, model, '--company', 'Entreprise du banc', '--json'])
  const prefix = `bench_${Date.now().toString(36)}`
  const csv = join(work, 'classe.csv')
  await writeFile(csv, ['Nom;Prénom;Classe', ...Array.from({length: students}, (_, i) => `ÉLÈVE${String.fromCharCode(65 + (i % 26))}${i};Prénom${i};BTS BANC`)].join('\n') + '\n')
  log(`pgi db class: ${students} per-student databases from ${model}`)
  const calibrationBefore = hostCalibrationMs()
  const vmUptimeS = await uptimeSeconds(qemuPid)
  const loadStart = load1()
  const stat0 = await guestCpu(labDir, est)
  const cpu0 = await cpuSeconds(qemuPid)
  const cls = await must(['db', 'class', uai, '--model', model, '--students', csv, '--prefix', prefix, '--out', join(work, 'classes'), '--json'])
  const vmHostCpuS = Math.round(((await cpuSeconds(qemuPid)) - cpu0) * 10) / 10
  const stat1 = await guestCpu(labDir, est)
  const guestCpuS = stat0 && stat1 ? Object.fromEntries(Object.keys(stat1).map((k) => [k, Math.round((stat1[k] - stat0[k]) * 10) / 10])) : null
  const loadEnd = load1()
  const calibrationAfter = hostCalibrationMs()
  const r = cls.json.result
  const listed = await must(['db', 'list', uai, '--json'])
  const dbs = listed.json.result.establishments[0].databases.length
  const dropped = await must(['db', 'drop', uai, r.databases[0].name, '--yes', '--json'])
  // the CLI's own start and fleet opening, measured on a command that fails before the VM is asked
  const start = await pgi(['db', 'create', uai, 'Nom-invalide', '--json'])
  const wallS = cls.ms / 1000
  result = {
    bench: 'db-class',
    ok: r.databases.length === students && wallS <= 60,
    target: {wallS: 60},
    students,
    databases: r.databases.length,
    wallS: Math.round(wallS * 10) / 10,
    engineS: r.seconds,
    method: r.method,
    outsideEngineS: Math.round((wallS - r.seconds) * 10) / 10,
    vmHostCpuS,
    guestCpuS,
    vmCores,
    vmMemoryMb,
    hostLoad: {start: loadStart, end: loadEnd},
    hostCalibrationMs: {before: calibrationBefore, after: calibrationAfter},
    vmUptimeS,
    cliStartS: Math.round(start.ms / 100) / 10,
    createModelS: Math.round(created.ms / 100) / 10,
    listS: Math.round(listed.ms / 100) / 10,
    listedDatabases: dbs,
    dropWithFinalDumpS: Math.round(dropped.ms / 100) / 10,
    machine: {cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: Math.round(totalmem() / 2 ** 30)},
    lab: ownLab ? 'own (qemu, 1 VM)' : labDir,
  }
} finally {
  if (ownLab && !a.keep) await pgi(['lab', 'stop', '--dir', labDir], 5 * 60_000).catch(() => undefined)
  if (!a.keep) await rm(work, {recursive: true, force: true})
}
console.log(JSON.stringify(result))
