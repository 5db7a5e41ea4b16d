#!/usr/bin/env node
// Off-site backup benchmark (issue 23).
//
// 1. Always: the second night's push after a day of class activity as a fraction of the first
//    full push (target <= 5 %). The work is bench/backup.py (the image's guest tools natively,
//    real restic and rclone: see its docstring). Options --students N, --parties N are passed on.
// 2. With --tcg: restore time per GB under software emulation, as a Région runs it after losing
//    a server. A qemu lab (one node, two establishments, one VM at a time beside the other), a
//    Région REST server (`rclone serve restic --append-only` on 127.0.0.1, reached by the guests
//    through their uplink address, the lab's link simulator unshaped: the restore's own cost, not
//    a link's), `pgi deploy` of A with the off-site settings, `pgi db class` of --restore-students
//    (10) copies of its database, the nightly backup and its push (the guest's pgi-backup and
//    pgi-offsite), `pgi deploy` of B, then `pgi backup restore A --to B --replace --yes` timed:
//    wall time, the guest's own time per database, the dumps' bytes (the manifest) and the
//    restored databases' size in PostgreSQL → seconds per GB of each. Needs root, a build
//    (`npm run build`) and a built 1.x image (--images-dir, default <state dir>/images). About
//    30 minutes.
//
// Usage: node bench/backup.mjs [--students 10] [--parties 100] [--explain] [--tcg [--restore-students 10] [--images-dir DIR] [--version V] [--keep]]
// --explain: where the second night's bytes went (each blob restic stored and its file), on stderr.
// Last line: one JSON object {"bench":"backup",...} (with --tcg: its "restore_tcg" part).
import {spawn, spawnSync} from 'node:child_process'
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {createServer} from 'node:net'
import {cpus, loadavg, tmpdir, totalmem} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

import {runPgi} from './pgi-cli.js'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '..')
const {values: a} = parseArgs({
  options: {
    students: {type: 'string'},
    parties: {type: 'string'},
    tcg: {type: 'boolean', default: false},
    'restore-students': {type: 'string', default: '10'},
    'images-dir': {type: 'string'},
    version: {type: 'string'},
    keep: {type: 'boolean', default: false},
    explain: {type: 'boolean', default: false},
  },
})
const log = (m) => process.stderr.write(`[bench backup ${new Date().toISOString().slice(11, 19)}] ${m}\n`)

const pyArgs = [join(here, 'backup.py'), ...(a.students ? ['--students', a.students] : []), ...(a.parties ? ['--parties', a.parties] : []), ...(a.explain ? ['--explain'] : [])]
const py = spawnSync('/usr/bin/python3', pyArgs, {stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 64 << 20})
process.stderr.write(py.stdout.split('\n').slice(0, -2).join('\n') + '\n')
const last = py.stdout.trim().split('\n').at(-1) ?? ''
if (py.status !== 0 || !last.startsWith('{')) {
  log(`bench/backup.py failed (exit ${py.status})`)
  process.exit(py.status || 1)
}
const result = JSON.parse(last)
if (a.tcg) result.restore_tcg = await restoreUnderTcg()
console.log(JSON.stringify(result))

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const ad = s.address()
      s.close(() => (typeof ad === 'object' && ad ? res(ad.port) : rej(new Error('no port'))))
    })
  })
}

/** The uplink address of a guest network (src/lab/qemu-uplink.ts): its third-last address. */
function uplinkOf(cidr) {
  const [ip, prefix] = cidr.split('/')
  const n = ip.split('.').reduce((x, o) => x * 256 + Number(o), 0)
  const size = 2 ** (32 - Number(prefix))
  const lastAddr = Math.floor(n / size) * size + size - 3
  return [24, 16, 8, 0].map((sh) => Math.floor(lastAddr / 2 ** sh) % 256).join('.')
}

async function restoreUnderTcg() {
  const {imagesDir} = await import(join(root, 'dist', 'src', 'paths.js'))
  const {loadValidInventory} = await import(join(root, 'dist', 'src', 'inventory', 'load.js'))
  const {openInventoryStore} = await import(join(root, 'dist', 'src', 'fleet', 'open.js'))
  const {Hypervisors} = await import(join(root, 'dist', 'src', 'hypervisors.js'))
  const {StderrIo} = await import(join(root, 'dist', 'src', 'io.js'))
  const students = Number(a['restore-students'])
  if (!(Number.isInteger(students) && students >= 0 && students <= 60)) throw new Error(`--restore-students ${a['restore-students']}: a whole number from 0 to 60`)
  const images = resolve(a['images-dir'] ?? imagesDir(process.env))
  const version = a.version ?? (await readdir(join(images, 'pgi-tryton'))).filter((v) => v.startsWith('1.')).sort((x, y) => x.localeCompare(y, undefined, {numeric: true})).at(-1)
  if (!version) throw new Error(`no pgi-tryton 1.x image in ${images}`)
  const work = await mkdtemp(join(tmpdir(), 'pgi-bench-restore-'))
  const labDir = join(work, 'lab')
  const env = {...process.env, PGI_STATE_DIR: join(work, 'state'), CI: 'true', PGI_LOG_LEVEL: 'warn'}
  for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR', 'PGI_CLASS_DIR', 'PGI_TOKEN_ID']) delete env[k]
  const pgi = async (args, timeoutMs) => {
    const r = await runPgi(env, args, timeoutMs)
    return {...r, s: r.ms / 1000}
  }
  const must = async (args, timeoutMs) => {
    const r = await pgi(args, timeoutMs)
    if (r.code !== 0) throw new Error(`pgi ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).slice(-2000)}`)
    log(`pgi ${args.slice(0, 3).join(' ')}: ${r.s} s`)
    return r
  }
  const deployArgs = (uai) => ['deploy', uai, '--yes', '--json', '--image', version, '--images-dir', images, '--lab-dir', labDir, '--handoff-dir', join(work, 'handoffs'), '--health-timeout', '1800', '--agent-timeout', '900']
  let rclone
  try {
    log(`qemu lab in ${labDir}, pgi-tryton ${version} from ${images}`)
    await must(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '2', '--dir', labDir, '--json'], 10 * 60_000)
    const port = await freePort()
    await mkdir(join(work, 'repos'))
    rclone = spawn('rclone', ['serve', 'restic', '--append-only', '--addr', `127.0.0.1:${port}`, join(work, 'repos')], {stdio: 'ignore', detached: true})
    const labInv = await loadValidInventory(join(labDir, 'inventory', 'lab.yaml'))
    const [A, B] = labInv.establishments
    // the guests' path to the Région's server (guestfwd through the link simulator), unshaped
    await writeFile(join(labDir, 'link-sim.yaml'), `uplink:\n  ports:\n    8000: 127.0.0.1:${port}\ndefault:\n  bandwidth: 1000M\n  latency_ms: 0\n`)
    const invFile = join(work, 'inventory.yaml')
    await writeFile(invFile, `${await readFile(join(labDir, 'inventory', 'lab.yaml'), 'utf8')}\noffsite:\n  repository: "rest:http://${uplinkOf(A.network.address)}:8000/{uai}/"\n  region_repository: "${join(work, 'repos')}/{uai}"\n`)
    env.PGI_INVENTORY = invFile
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    const inv = await loadValidInventory(invFile)
    const io = new StderrIo('warn', false)
    const api = await new Hypervisors(inv, {store: await openInventoryStore(inv, env.PGI_SECRETS_DIR, env), io, env}).get(A.hypervisor)
    const guest = async (e, command) => {
      const r = await api.agentExec(e.node, e.vmid, command, {timeoutMs: 60 * 60_000})
      if (r.exitcode !== 0) throw new Error(`${command.join(' ')} on ${e.uai}: exit ${r.exitcode}: ${r.stderr.slice(-1500)}`)
      return r.stdout
    }
    await must(deployArgs(A.uai))
    if (students > 0) {
      const csv = join(work, 'classe.csv')
      await writeFile(csv, ['Nom;Prénom;Classe', ...Array.from({length: students}, (_, i) => `ÉLÈVE${i};Prénom${i};BTS BANC`)].join('\n') + '\n')
      await must(['db', 'class', A.uai, '--model', 'pgi', '--students', csv, '--prefix', 'banc', '--out', join(work, 'classes'), '--json'])
    }
    const setPath = (await guest(A, ['/usr/local/sbin/pgi-backup'])).trim().split('\n').at(-1)
    const manifest = JSON.parse(await guest(A, ['cat', join(dirname(setPath), 'manifest.json')]))
    const dumpBytes = manifest.databases.reduce((s, d) => s + d.size, 0)
    // the databases of the set (names checked by pgi-db: letters, digits, underscores)
    const names = manifest.databases.map((d) => d.name).filter((n) => /^[a-z0-9_]+$/.test(n))
    const dbBytes = Number((await guest(A, ['psql', '-h', '/var/run/postgresql', '-U', 'postgres', '-tAc',
      `SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datname IN (${names.map((n) => `'${n}'`).join(', ')})`])).trim())
    const pushT0 = performance.now()
    const push = JSON.parse((await guest(A, ['/usr/local/sbin/pgi-offsite', '--now'])).trim().split('\n').at(-1))
    const pushS = Math.round(performance.now() - pushT0) / 1000
    if (push.state !== 'ok') throw new Error(`the push failed: ${JSON.stringify(push)}`)
    log(`pushed ${manifest.databases.length} databases (${dumpBytes} bytes of dumps, ${dbBytes} bytes in PostgreSQL) in ${pushS} s`)
    await must(deployArgs(B.uai))
    const loadStart = loadavg()[0]
    const r = await must(['backup', 'restore', A.uai, '--to', B.uai, '--replace', '--yes', '--json', '--handoff-dir', join(work, 'restored-handoffs')])
    const loadEnd = loadavg()[0]
    const res = r.json.result
    if (!res.loginOk || res.databases.length !== manifest.databases.length || !res.databases.every((d) => d.row_counts_match)) {
      throw new Error(`the restore did not bring every database back: ${JSON.stringify(res).slice(0, 2000)}`)
    }
    const perDb = res.databases.map((d) => d.seconds).filter((x) => typeof x === 'number')
    const gb = (n) => n / 1e9
    return {
      databases: res.databases.length,
      students,
      dumps_bytes: dumpBytes,
      postgres_bytes: dbBytes,
      push_s: pushS,
      push_bytes_sent: push.bytes_sent,
      restore_wall_s: r.s,
      restore_guest_s: res.seconds ?? null,
      per_database_s: {min: Math.min(...perDb), max: Math.max(...perDb), sum: Math.round(perDb.reduce((x, y) => x + y, 0) * 10) / 10},
      s_per_gb_of_dumps: Math.round(r.s / gb(dumpBytes)),
      s_per_gb_in_postgres: Math.round(r.s / gb(dbBytes)),
      image: version,
      emulation: 'TCG (no KVM here)',
      load: {start: Math.round(loadStart * 100) / 100, end: Math.round(loadEnd * 100) / 100},
      machine: {cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: Math.round(totalmem() / 2 ** 30)},
    }
  } finally {
    if (rclone?.pid) process.kill(-rclone.pid, 'SIGTERM')
    await pgi(['lab', 'stop', '--dir', labDir], 5 * 60_000).catch(() => undefined)
    if (!a.keep) await rm(work, {recursive: true, force: true})
  }
}
