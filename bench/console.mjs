#!/usr/bin/env node
// Teachers' console benchmark on a real VM (needs root, a built pgi: `npm run build`, and a built
// pgi-tryton image): boots the image under QEMU (KVM when it works, else TCG, as the lab; disks with
// the cache and aio PVE gives them, src/lab/pve-drive.ts) with a
// blank data disk, applies pgi-configure, makes a teacher with `pgi-console teacher add` over the
// guest agent, then drives the console over HTTPS (TLS verified against the VM's certificate, one
// kept-alive connection, as a browser) and reports:
//   - each main page's server time: the application's own (Server-Timing) and the round trip
//     through nginx's TLS, median and max over --repeat GETs (the first, cold, reported apart);
//   - the forms' server time: once each right after the boot, then --repeat times each on the
//     settled VM (activation, teacher login, AMI login; a new session each time);
//   - the wall time of the jobs: a class of --students per-student databases from the BTS
//     template, a backup, a reset, a restore in place; and the class job's own record (seconds
//     queued, running, and in the engine), read from the console's store in the VM;
//   - how soon a queued job starts: from a backup form's POST to the job seen running.
// Options: --version V (default: the newest in the images folder), --images-dir DIR,
// --students N (30), --repeat N (5), --cores N / --memory-mb M (a deploy's: 2, 4096), --cpu MODEL (QEMU's -cpu), --no-settle, --keep. Last line: one JSON object {"bench":"console",...}.
import {X509Certificate} from 'node:crypto'
import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {Agent, request} from 'node:https'
import {cpus, tmpdir, totalmem} from 'node:os'
import {join} from 'node:path'

import {hostCalibrationMs} from './host-speed.js'

const argv = process.argv.slice(2)
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : def
}
const {verifyImage} = await import('../dist/src/image/images.js')
const {imagesDir} = await import('../dist/src/paths.js')
const {QemuVm, userNetFor, writeSeedImage} = await import('../dist/src/qemu/index.js')
const {probeBlockHost, pveBlockSettings} = await import('../dist/src/lab/pve-drive.js')
const {run} = await import('../dist/src/exec.js')
const {StderrIo} = await import('../dist/src/io.js')
const {generatePassword} = await import('../dist/src/secrets/store.js')
const io = new StderrIo('warn', false)
const root = opt('images-dir', imagesDir(process.env))
const students = Number(opt('students', '30'))
const repeat = Number(opt('repeat', '5'))
const settle = !argv.includes('--no-settle')
// QEMU's -cpu for the VM (default: the accelerator's, src/qemu/accel.ts; e.g. --cpu max to compare)
const cpu = opt('cpu')
// the VM as a deploy makes it (the inventory's built-in defaults: 2 vCPUs, 4096 MiB), or --cores / --memory-mb
const {BUILTIN_DEFAULTS} = await import('../dist/src/inventory/rules.js')
const cores = Number(opt('cores', String(BUILTIN_DEFAULTS.cores)))
const memoryMiB = Number(opt('memory-mb', String(BUILTIN_DEFAULTS.memoryMb)))
if (!(Number.isInteger(cores) && cores >= 1 && cores <= 8)) throw new Error(`--cores ${opt('cores')}: a whole number from 1 to 8`)
if (!(Number.isInteger(memoryMiB) && memoryMiB >= 512 && memoryMiB <= 16384)) throw new Error(`--memory-mb ${opt('memory-mb')}: a whole number from 512 to 16384`)
const log = (m) => process.stderr.write(`${m}\n`)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

let version = opt('version')
if (!version) {
  const vs = await readdir(join(root, 'pgi-tryton'))
  version = vs.sort((a, b) => a.localeCompare(b, undefined, {numeric: true})).at(-1)
}
const {manifest, diskPath} = await verifyImage(version, {root})
const dir = await mkdtemp(join(tmpdir(), 'pgi-bench-console-'))
let vm
try {
  const os = join(dir, 'os.qcow2')
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', diskPath, os], {}, io)
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'data.qcow2'), '8G'], {}, io)
  await writeSeedImage({hostname: 'pgi-bench', user: 'ami', nics: [{name: 'eth0', ipconfig: {ip: '10.0.2.15/24', gw: '10.0.2.2'}}]}, join(dir, 'seed.iso'), io)
  // the disks' cache and aio as PVE (and the lab) give them: direct I/O, io_uring
  const block = pveBlockSettings({media: 'disk'}, await probeBlockHost(dir))
  if (block.note) log(block.note)
  const t0 = Date.now()
  vm = await QemuVm.launch(
    {
      name: `bench-console-${version}`,
      dir,
      memoryMiB,
      cpus: cores,
      ...(cpu ? {cpu} : {}),
      disks: [
        {file: os, format: 'qcow2', id: 'virtio0', cache: block.cache, aio: block.aio},
        {file: join(dir, 'data.qcow2'), format: 'qcow2', id: 'virtio1', serial: 'pgi-data', cache: block.cache, aio: block.aio},
      ],
      seedImage: join(dir, 'seed.iso'),
      network: userNetFor('10.0.2.15', 24, '10.0.2.2', [{name: 'https', guestPort: manifest.ports?.https ?? 443}]),
    },
    io,
  )
  log(`booted ${manifest.name} ${version} (${vm.accel}); waiting for pgi-health`)
  const guest = async (args, input, timeoutMs = 300_000) => {
    const r = await vm.qga({timeoutMs: 30_000}).run(args, {input, timeoutMs})
    if (r.exitcode !== 0) throw new Error(`${args.join(' ')}: exit ${r.exitcode}: ${r.stderr.slice(-500)}`)
    return r.stdout
  }
  // the guest's own CPU accounting (/proc/stat, all vCPUs summed, seconds)
  const guestStat = async () => {
    const f = (await guest(['/bin/cat', '/proc/stat'])).split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    return Object.fromEntries(['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'].map((n, i) => [n, (f[i] ?? 0) / 100]))
  }
  await vm.qga({timeoutMs: 5000}).waitReady(15 * 60_000)
  for (;;) {
    const r = await vm.qga({timeoutMs: 30_000}).run(['/usr/local/sbin/pgi-health'], {timeoutMs: 180_000}).catch(() => ({exitcode: -1}))
    if (r.exitcode === 0) break
    if (Date.now() - t0 > 20 * 60_000) throw new Error('not healthy after 20 min')
    await sleep(5000)
  }
  const bootS = (Date.now() - t0) / 1000
  log(`healthy after ${bootS.toFixed(0)} s`)
  const sql = generatePassword()
  await guest(['/usr/local/sbin/pgi-configure'], JSON.stringify({sql_admin: {login: 'pgi_admin', password: sql.reveal()}, tryton_admin: {login: 'admin', password: generatePassword().reveal()}}))
  const added = JSON.parse(await guest(['/usr/local/sbin/pgi-console', 'teacher', 'add', '--name', 'Prof Bench', '--email', 'bench@lycee-test.fr']))
  // more teachers, each with its one-time code: the activation measured again once the VM is settled
  const more = []
  for (let i = 0; i < repeat; i++) {
    const email = `bench${i}@lycee-test.fr`
    more.push({email, code: JSON.parse(await guest(['/usr/local/sbin/pgi-console', 'teacher', 'add', '--name', `Prof Bench ${i}`, '--email', email])).setup_code})
  }
  const cert = await guest(['/bin/cat', '/etc/pgi/tls/server.crt'])
  const port = vm.forwards.find((f) => f.name === 'https').hostPort
  const agent = new Agent({keepAlive: true, maxSockets: 1, ca: cert})
  const jar = {}

  const call = (path, {method = 'GET', form} = {}) =>
    new Promise((resolve, reject) => {
      const body = form ? new URLSearchParams(form).toString() : undefined
      const t = process.hrtime.bigint()
      const req = request(
        {host: '127.0.0.1', port, path, method, agent, headers: {
          Cookie: Object.entries(jar).map(([k, v]) => `${k}=${v}`).join('; '),
          ...(body ? {'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': Buffer.byteLength(body), Origin: `https://127.0.0.1:${port}`} : {}),
        }},
        (res) => {
          let text = ''
          res.setEncoding('utf8')
          res.on('data', (d) => (text += d))
          res.on('end', () => {
            for (const c of res.headers['set-cookie'] ?? []) {
              const [kv] = c.split(';')
              const [k, v] = kv.split('=')
              jar[k] = v
            }
            const app = /app;dur=([\d.]+)/.exec(String(res.headers['server-timing'] ?? ''))
            resolve({status: res.statusCode, text, location: res.headers.location, appMs: app ? Number(app[1]) : null,
              totalMs: Number(process.hrtime.bigint() - t) / 1e6})
          })
        },
      )
      req.on('error', reject)
      req.end(body)
    })
  const token = (html) => /name="csrf_token" value="([^"]+)"/.exec(html)[1]
  const post = async (path, form, from) => call(path, {method: 'POST', form: {...form, csrf_token: token((await call(from)).text)}})
  const job = async (r) => {
    const id = /taches\/(\d+)/.exec(r.location ?? '')?.[1]
    if (!id) throw new Error(`no job: HTTP ${r.status} ${r.text.slice(-300)}`)
    const t = Date.now()
    for (;;) {
      const j = JSON.parse((await call(`/console/taches/${id}.json`)).text)
      if (j.state === 'done') return {id, seconds: (Date.now() - t) / 1000}
      if (j.state === 'failed') throw new Error(`job ${id} failed: ${(await call(`/console/taches/${id}`)).text.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').slice(-400)}`)
      await sleep(1000)
    }
  }

  // the forms' own server times (POST), each once: the activation (an Argon2id hash), the AMI's
  // login (a SCRAM login to PostgreSQL), and the first GET of a login page
  const forms = {}
  const activationPage = await call('/console/activer')
  forms.activation_get_first = activationPage.appMs
  let r = await call('/console/activer', {method: 'POST', form: {email: 'bench@lycee-test.fr', code: added.setup_code, password: 'Bench-password-1', confirm: 'Bench-password-1', csrf_token: token(activationPage.text)}})
  if (r.status !== 302) throw new Error(`activation: HTTP ${r.status}`)
  forms.activation_post = r.appMs
  const csv = ['Nom;Prénom;Classe', ...Array.from({length: students}, (_, i) => `ELEVE${String.fromCharCode(65 + (i % 26))}${i};Prénom${i};BTS`)].join('\n')
  // the class is made on a settled VM, as a teacher makes one during a lesson, not in the boot's
  // last minute: trytond, pgi-health and the console's own first work end first (the guest's CPU
  // busy under 25 % over 5 s, waited for at most 5 minutes); what was waited and how busy the
  // guest was go in the JSON (--no-settle: straight after the activation, as before)
  const beforeClass = {uptime_s: null, waited_s: 0, guest_busy_pct: null}
  const t1 = Date.now()
  for (;;) {
    const a = await guestStat()
    await sleep(5000)
    const b = await guestStat()
    const d = Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - a[k]]))
    const all = Object.values(d).reduce((x, y) => x + y, 0)
    beforeClass.guest_busy_pct = Math.round((100 * (all - d.idle - d.iowait)) / all)
    if (!settle || beforeClass.guest_busy_pct < 25 || Date.now() - t1 > 5 * 60_000) break
  }
  beforeClass.waited_s = Math.round((Date.now() - t1) / 1000)
  beforeClass.uptime_s = Math.round(Number((await guest(['/bin/cat', '/proc/uptime'])).split(' ')[0]))
  log(`class starts at VM uptime ${beforeClass.uptime_s} s, guest busy ${beforeClass.guest_busy_pct} % (waited ${beforeClass.waited_s} s)`)
  const calibrationBefore = hostCalibrationMs()
  const stat0 = await guestStat()
  r = await post('/console/classes', {label: 'Bench', students: csv, model: 'bts', mode: 'per-student', company: ''}, '/console/classes/nouvelle')
  const klass = await job(r)
  const stat1 = await guestStat()
  const classGuestCpuS = Object.fromEntries(Object.keys(stat1).map((k) => [k, Math.round((stat1[k] - stat0[k]) * 10) / 10]))
  const classCalibration = {before: calibrationBefore, after: hostCalibrationMs()}
  log(`class of ${students}: ${klass.seconds} s (guest CPU ${JSON.stringify(classGuestCpuS)}, host calibration ${classCalibration.before} -> ${classCalibration.after} ms)`)
  const classId = /classes\/(\d+)/.exec((await call(`/console/taches/${klass.id}`)).text)[1]
  const db = /<th scope="row">(bench_[a-z0-9_]+)<\/th>/.exec((await call(`/console/classes/${classId}`)).text.replaceAll('bench_modele', ''))[1]
  const backup = await job(await post(`/console/bases/${db}/sauvegarder`, {}, `/console/classes/${classId}`))
  const reset = await job(await post(`/console/bases/${db}/reinitialiser`, {confirm: 'oui'}, `/console/bases/${db}/reinitialiser`))
  const restorePage = (await call(`/console/bases/${db}/restaurer`)).text
  const bid = [...restorePage.matchAll(/name="backup_id" id="b\d+" value="([^"]+)"/g)].map((m) => m[1]).find((b) => b.endsWith('-manual'))
  const restore = await job(await post(`/console/bases/${db}/restaurer`, {backup_id: bid, mode: 'replace', confirm: db}, `/console/bases/${db}/restaurer`))
  log(`backup ${backup.seconds} s, reset ${reset.seconds} s, restore ${restore.seconds} s`)
  // how soon a queued job starts: backups of the same database (max(3, --repeat)), each from its
  // form's POST to the first sight of it running (its JSON polled every 20 ms: the job process
  // marks it running once it has started), after a pause of up to a second (a job arrives at any
  // moment of a worker that looks at its queue once a second)
  const starts = []
  for (let i = 0; i < Math.max(3, repeat); i++) {
    await sleep(Math.random() * 1000)
    const page = await call(`/console/classes/${classId}`)
    const t0 = process.hrtime.bigint()
    const queued = await call(`/console/bases/${db}/sauvegarder`, {method: 'POST', form: {csrf_token: token(page.text)}})
    const id = /taches\/(\d+)/.exec(queued.location ?? '')?.[1]
    if (!id) throw new Error(`no job: HTTP ${queued.status}`)
    while (JSON.parse((await call(`/console/taches/${id}.json`)).text).state === 'queued') await sleep(20)
    starts.push(Number(process.hrtime.bigint() - t0) / 1e6)
    await job(queued)
  }
  log(`job start (POST to running): ${starts.map((x) => Math.round(x)).join(', ')} ms`)

  const pages = {
    home: '/console/',
    class_page: `/console/classes/${classId}`,
    class_sheet: `/console/classes/${classId}/fiche`,
    class_form: '/console/classes/nouvelle',
    restore_page: `/console/bases/${db}/restaurer`,
    reset_page: `/console/bases/${db}/reinitialiser`,
    import_form: '/console/bases/importer',
    job_page: `/console/taches/${klass.id}`,
    job_json: `/console/taches/${klass.id}.json`,
    health: '/console/sante',
  }
  const stats = (v) => {
    const s = [...v].sort((a, b) => a - b)
    return {median: Number(s[Math.floor(s.length / 2)].toFixed(1)), max: Number(s.at(-1).toFixed(1))}
  }
  const measure = async (set) => {
    const out = {}
    for (const [name, path] of Object.entries(set)) {
      const first = await call(path)
      if (first.status !== 200) throw new Error(`${path}: HTTP ${first.status}`)
      const runs = []
      for (let i = 0; i < repeat; i++) runs.push(await call(path))
      out[name] = {first_app_ms: first.appMs, app_ms: stats(runs.map((x) => x.appMs ?? NaN)), total_ms: stats(runs.map((x) => x.totalMs))}
    }
    return out
  }
  const teacherPages = await measure(pages)
  // the AMI's pages, with the SQL administrator's codes
  for (const k of Object.keys(jar)) delete jar[k]
  const amiLoginPage = await call('/console/ami/connexion')
  forms.ami_login_get_first = amiLoginPage.appMs
  r = await call('/console/ami/connexion', {method: 'POST', form: {login: 'pgi_admin', password: sql.reveal(), csrf_token: token(amiLoginPage.text)}})
  if (r.status !== 302) throw new Error(`AMI login: HTTP ${r.status}`)
  forms.ami_login_post = r.appMs
  const amiPages = await measure({ami_home: '/console/ami/', ami_audit: '/console/ami/journal'})
  // the forms again, --repeat times each, on the settled VM (the first activation above runs
  // seconds after the boot, beside the services' own start): a new session each time
  const again = async (path, form) => {
    for (const k of Object.keys(jar)) delete jar[k]
    const page = await call(path)
    const res = await call(path, {method: 'POST', form: {...form, csrf_token: token(page.text)}})
    if (res.status !== 302) throw new Error(`${path}: HTTP ${res.status}`)
    return res.appMs
  }
  const settled = {activation_post: [], teacher_login_post: [], ami_login_post: []}
  for (const t of more) {
    settled.activation_post.push(await again('/console/activer', {email: t.email, code: t.code, password: 'Bench-password-1', confirm: 'Bench-password-1'}))
    settled.teacher_login_post.push(await again('/console/connexion', {email: t.email, password: 'Bench-password-1'}))
    settled.ami_login_post.push(await again('/console/ami/connexion', {login: 'pgi_admin', password: sql.reveal()}))
  }
  for (const [k, v] of Object.entries(settled)) forms[`${k}_settled`] = stats(v)
  // where the class's time went: the console's own record of the job (queued, started, ended;
  // the engine's seconds in its result), read from its store in the VM
  const jobRow = JSON.parse(await guest(['/usr/bin/python3', '-c', [
    'import json, sqlite3, sys',
    "sys.path.insert(0, '/usr/local/lib/pgi')",
    'from console import config',
    "c = sqlite3.connect('file:%s?mode=ro' % config.STORE, uri=True)",
    "r = c.execute('SELECT created_at, started_at, finished_at, result FROM jobs WHERE id = ?', (int(sys.argv[1]),)).fetchone()",
    "print(json.dumps({'created_at': r[0], 'started_at': r[1], 'finished_at': r[2], 'engine_s': json.loads(r[3] or '{}').get('seconds')}))",
  ].join('\n'), klass.id]))
  const at = (t) => Date.parse(t) / 1000
  const classDetail = {queued_s: at(jobRow.started_at) - at(jobRow.created_at), running_s: at(jobRow.finished_at) - at(jobRow.started_at), engine_s: jobRow.engine_s}
  log(`class job: queued ${classDetail.queued_s} s, running ${classDetail.running_s} s (whole seconds), engine ${classDetail.engine_s} s`)
  const all = {...teacherPages, ...amiPages}
  const worst = Math.max(...Object.values(all).map((p) => p.app_ms.max))
  const worstTotal = Math.max(...Object.values(all).map((p) => p.total_ms.max))
  const result = {
    bench: 'console',
    machine: {cpus: cpus().length, mem_gib: Math.round(totalmem() / 2 ** 30)},
    image: `${manifest.name} ${version}`,
    accel: vm.accel,
    cpu: cpu ?? 'default',
    boot_to_healthy_s: Number(bootS.toFixed(1)),
    fingerprint: new X509Certificate(cert).fingerprint256,
    jobs_s: {[`class_${students}`]: klass.seconds, backup: backup.seconds, reset: reset.seconds, restore: restore.seconds},
    class_job: {...classDetail, before: beforeClass, guest_cpu_s: classGuestCpuS, host_calibration_ms: classCalibration},
    job_start_ms: {...stats(starts), runs: starts.map((x) => Math.round(x))},
    pages: all,
    forms_app_ms: forms,
    page_app_ms_max: worst,
    page_total_ms_max: Number(worstTotal.toFixed(1)),
    page_target_ms: 300,
  }
  for (const [name, p] of Object.entries(all)) log(`${name.padEnd(14)} app median ${p.app_ms.median} ms, max ${p.app_ms.max} ms; round trip median ${p.total_ms.median} ms (first: ${p.first_app_ms} ms)`)
  console.log(JSON.stringify(result))
} finally {
  await vm?.stop({graceMs: 5000}).catch(() => undefined)
  if (!argv.includes('--keep')) await rm(dir, {recursive: true, force: true})
  else log(`kept ${dir}`)
}
