#!/usr/bin/env node
// bench/migration: the time a major upgrade (1.x -> 2.0: PostgreSQL 15 -> 17, Tryton 6.0 -> 7.0)
// takes for one establishment on a qemu lab (software emulation when KVM does not work), with
// --databases (5) databases of a term of class work each (test/helpers/class_data.py through
// Debian's proteus 6.0: 20 parties, 5 products, --invoices (50) customer invoices posted and paid,
// January closed), as a Région runs it: `pgi rollout stage` then `pgi rollout start` through the
// bundled CLI (bin/run.js).
//
// Where the time goes: the rollout's wall time, split into the guest's migration (per database and
// step, from /srv/pgi/.pgi/major-migration.json: restore from the PostgreSQL 15 dump, the
// migration notes' steps, trytond-admin --all, the steps after, the figures compared) and the rest
// (quiesce, pre-swap backup and its verification, shutdown, disk swap, the 2.x boot, the gate).
//
// Needs root, a build (`npm run build`), both image lines built, Debian's python3-proteus (6.0) on
// this host (scripts/install-deps.sh). Starts its own qemu lab (one VM) and stops it at the end.
// Usage:
//   node bench/migration.mjs [--from-images-dir DIR1] [--to-images-dir DIR2] [--databases 5] [--invoices 50] [--keep]
// (default for both: <state dir>/images, its newest 1.x and 2.x)
// Last line: one JSON object {"bench":"migration",...}.
import {spawn} from 'node:child_process'
import {mkdtemp, readdir, readFile, rm} from 'node:fs/promises'
import {cpus, loadavg, tmpdir, totalmem} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const {values: a} = parseArgs({
  options: {
    'from-images-dir': {type: 'string'},
    'to-images-dir': {type: 'string'},
    databases: {type: 'string', default: '5'},
    invoices: {type: 'string', default: '50'},
    keep: {type: 'boolean', default: false},
  },
})
const nDatabases = Number(a.databases)
const invoices = Number(a.invoices)
const log = (m) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${m}\n`)
const {parseHandoff} = await import(join(root, 'dist', 'src', 'fleet', 'handoff.js'))
const {imagesDir} = await import(join(root, 'dist', 'src', 'paths.js'))

const work = await mkdtemp(join(tmpdir(), 'pgi-bench-migration-'))
const env = {...process.env, PGI_STATE_DIR: join(work, 'state'), CI: 'true', PGI_LOG_LEVEL: 'warn'}
for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_TOKEN_ID']) delete env[k]

/** Runs a program; returns its exit code, output and wall time (ms). */
function runProgram(file, args, o = {}) {
  return new Promise((res, rej) => {
    const t0 = performance.now()
    const child = spawn(file, args, {env: o.env ?? env, stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    if (o.input !== undefined) child.stdin.end(o.input)
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 3 * 3600_000)
    child.on('error', rej)
    child.on('close', (code) => {
      clearTimeout(timer)
      res({code, stdout, stderr, ms: Math.round(performance.now() - t0)})
    })
  })
}
async function pgi(args, timeoutMs) {
  const r = await runProgram(process.execPath, [join(root, 'bin', 'run.js'), ...args], {timeoutMs})
  if (r.code !== 0) throw new Error(`pgi ${args.join(' ')} exited ${r.code}: ${r.stderr.slice(-3000)}`)
  return {...r, json: JSON.parse(r.stdout)}
}
/** The newest pgi-tryton version of a line (1.x, 2.x) in an images folder. */
async function newest(dir, line) {
  const have = (await readdir(join(dir, 'pgi-tryton')).catch(() => [])).filter((v) => v.startsWith(`${line}.`))
  const v = have.sort((x, y) => x.localeCompare(y, undefined, {numeric: true})).at(-1)
  if (!v) throw new Error(`no pgi-tryton ${line}.x in ${dir}: build it (pgi image build pgi-tryton${line === '1' ? '' : '@' + line}) or give --${line === '1' ? 'from' : 'to'}-images-dir`)
  return v
}

// proteus 6.0 (Debian's, on this host): connected with the credentials read from stdin, never argv
const PROTEUS = String.raw`
import json, sys, datetime, urllib.parse
from decimal import Decimal
from proteus import config, Model, Wizard
d = json.load(sys.stdin)
u = urllib.parse.urlsplit(d['url'])
config.set_xmlrpc('%s://%s:%s@%s/%s/' % (u.scheme, urllib.parse.quote(d['login'], safe=''), urllib.parse.quote(d['password'], safe=''), u.netloc, d['database']))
`

const labDir = join(work, 'lab')
let result
try {
  const fromImages = resolve(a['from-images-dir'] ?? imagesDir(process.env))
  const toImages = resolve(a['to-images-dir'] ?? imagesDir(process.env))
  const from = await newest(fromImages, '1')
  const to = await newest(toImages, '2')
  log(`qemu lab in ${labDir}: pgi-tryton ${from}, ${nDatabases} databases of ${invoices} invoices, then the rollout to ${to}`)
  await pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '1', '--dir', labDir, '--json'], 10 * 60_000)
  env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
  env.PGI_SECRETS_DIR = join(labDir, 'secrets')
  const uai = (await pgi(['inventory', 'list', '--json'])).json.result[0].uai
  const handoffs = join(work, 'handoffs')
  const deployed = await pgi(['deploy', uai, '--yes', '--json', '--image', from, '--images-dir', fromImages, '--lab-dir', labDir, '--handoff-dir', handoffs, '--health-timeout', '1800', '--agent-timeout', '900'])
  log(`deployed in ${Math.round(deployed.ms / 1000)} s`)
  const opened = await runProgram('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), join(handoffs, `${uai}.handoff.age`)])
  const h = parseHandoff(opened.stdout, 'handoff')
  const url = `http://${h.desktopClient.host}:${h.desktopClient.port}/`
  const script = PROTEUS + (await readFile(join(root, 'test', 'helpers', 'class_data.py'), 'utf8'))
  const input = JSON.stringify({url, database: 'pgi', login: h.trytonAdmin.login, password: h.trytonAdmin.password.reveal(), year: new Date().getFullYear(), invoices})
  const made = await runProgram('/usr/bin/python3', ['-W', 'ignore', '-c', script], {input})
  if (made.code !== 0) throw new Error(`class data: ${made.stderr.slice(-3000)}`)
  log(`class data in pgi: ${made.stdout.trim().split('\n').at(-1)} (${Math.round(made.ms / 1000)} s)`)
  for (let i = 2; i <= nDatabases; i++) await pgi(['db', 'copy', uai, 'pgi', `classe_${i}`, '--json'], 30 * 60_000)
  const listed = (await pgi(['db', 'list', uai, '--json'])).json.result.establishments[0].databases
  const sizes = Object.fromEntries(listed.map((d) => [d.name, d.size ?? d.sizeBytes ?? null]))
  const staged = await pgi(['rollout', 'stage', to, uai, '--images-dir', toImages, '--json'], 60 * 60_000)
  log(`staged in ${Math.round(staged.ms / 1000)} s; rolling out`)
  const r = await pgi(['rollout', 'start', to, uai, '--images-dir', toImages, '--yes', '--json', '--lab-dir', labDir, '--handoff-dir', handoffs, '--agent-timeout', '900', '--health-timeout', '1800'], 4 * 3600_000)
  const e = r.json.result.establishments[0]
  if (e.outcome !== 'updated') throw new Error(`the rollout ended ${e.outcome}: ${e.reason}`)
  // the guest's record of the migration, read through the lab's agent
  const {loadValidInventory} = await import(join(root, 'dist', 'src', 'inventory', 'load.js'))
  const {openInventoryStore} = await import(join(root, 'dist', 'src', 'fleet', 'open.js'))
  const {Hypervisors} = await import(join(root, 'dist', 'src', 'hypervisors.js'))
  const {StderrIo} = await import(join(root, 'dist', 'src', 'io.js'))
  const inv = await loadValidInventory(env.PGI_INVENTORY)
  const est = inv.establishments[0]
  const api = await new Hypervisors(inv, {store: await openInventoryStore(inv, env.PGI_SECRETS_DIR, env), io: new StderrIo('warn', false), env}).get(est.hypervisor)
  const st = JSON.parse((await api.agentExec(est.node, est.vmid, ['/bin/cat', '/srv/pgi/.pgi/major-migration.json'], {timeoutMs: 60_000})).stdout)
  const perDb = st.databases.map((d) => ({name: d.name, size: sizes[d.name] ?? null, seconds: d.seconds}))
  const migrationS = perDb.reduce((s, d) => s + Object.values(d.seconds ?? {}).reduce((x, y) => x + y, 0), 0)
  const steps = {}
  for (const d of perDb) for (const [k, v] of Object.entries(d.seconds ?? {})) steps[k] = Math.round(((steps[k] ?? 0) + v) * 10) / 10
  const wallS = r.ms / 1000
  result = {
    bench: 'migration',
    from,
    to,
    databases: perDb.length,
    invoicesPerDatabase: invoices,
    wallS: Math.round(wallS),
    migrationS: Math.round(migrationS),
    restOfRolloutS: Math.round(wallS - migrationS),
    perStepS: steps,
    perDatabase: perDb,
    handoffRewritten: Boolean(e.handoff),
    stageS: Math.round(staged.ms / 1000),
    classDataS: Math.round(made.ms / 1000),
    machine: {cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: Math.round(totalmem() / 2 ** 30), loadAtEnd: loadavg()[0].toFixed(1)},
    lab: 'own (qemu, 1 VM)',
  }
} finally {
  if (!a.keep) {
    await runProgram(process.execPath, [join(root, 'bin', 'run.js'), 'lab', 'stop', '--dir', labDir], {timeoutMs: 5 * 60_000}).catch(() => undefined)
    await rm(work, {recursive: true, force: true})
  }
}
console.log(JSON.stringify(result))
