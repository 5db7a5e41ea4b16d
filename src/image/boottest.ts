import {mkdir, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {run} from '../exec.js'
import type {Io} from '../io.js'
import {imagesDir, stateDir} from '../paths.js'
import {runSteps, type Step} from '../progress.js'
import type {Secret} from '../secret.js'
import {checkConsole} from './console-check.js'
import {sleep} from '../sleep.js'
import {verifyImage} from './images.js'

/**
 * `pgi image test`: boots a published image under QEMU (src/qemu) with a blank data
 * disk (or a given one) and a cloud-init seed, and checks the guest contract end to end: the
 * guest agent answers, pgi-health turns healthy, pgi-configure applies generated passwords,
 * a Tryton database with the French chart of accounts is created, the admin logs in over
 * JSON-RPC through the forwarded port, and everything is still there after a reboot.
 */
export interface BootTestOptions {
  version: string
  root?: string
  /** An existing data disk to attach instead of a blank one (qcow2 by extension, else raw); used in place. */
  dataDisk?: string
  /** Keep the VM's folder (disks, serial log) afterwards. */
  keep?: boolean
  /** Skip the database creation (faster: boot, health, configure, reboot). */
  quick?: boolean
  memoryMiB?: number
  /** Overall time limits (ms). */
  healthTimeoutMs?: number
  /**
   * Checks of the caller's own with a client of its choice (a test's proteus of the image's
   * Tryton series, a browser), once the test database exists and admin has logged in over
   * JSON-RPC: the server's web address on 127.0.0.1, the database and admin's login. Returns
   * a line for the step's summary; a failure fails the test.
   */
  clientCheck?: (target: ClientTarget) => Promise<string>
  env?: NodeJS.ProcessEnv
  io: Io
}

export interface HealthReport {
  healthy: boolean
  image: {name: string; version: string}
  checks: Record<string, {ok: boolean; [k: string]: unknown}>
  databases: {name: string; modules: Record<string, string | null>}[]
  problems: string[]
}

/** What `clientCheck` gets: a Tryton server with a database and its administrator. */
export interface ClientTarget {
  /** http://127.0.0.1:PORT/ : sao and JSON-RPC (the guest's port 80). */
  webUrl: string
  /** http://127.0.0.1:PORT/ : trytond itself (the guest's port 8000). */
  jsonrpcUrl: string
  database: string
  login: string
  password: Secret
  /** The image's Tryton series, from its packages ("6.0", "7.0"). */
  trytonSeries?: string
}

export interface BootTestResult {
  image: string
  version: string
  accel: string
  bootToHealthyS: number
  database?: string
  modules?: string[]
  rebootedHealthy: boolean
  health: HealthReport
  vmDir?: string
}

const TEST_DB = 'bts_test'

/** JSON-RPC call to trytond (as sao does), through the forwarded port on 127.0.0.1. */
export async function trytonRpc(port: number, path: string, method: string, params: unknown[], auth?: string): Promise<unknown> {
  const res = await fetch(`http://127.0.0.1:${port}/${path}`, {
    method: 'POST',
    headers: {'Content-Type': 'application/json', ...(auth ? {Authorization: auth} : {})},
    body: JSON.stringify({id: 1, method, params}),
  })
  const body = (await res.json()) as {result?: unknown; error?: unknown}
  if (res.status !== 200 || body.error) {
    throw new UserError(ErrorCode.IMAGE_INVALID, `Tryton ${method} failed (HTTP ${res.status}): ${JSON.stringify(body.error ?? body).slice(0, 300)}`)
  }
  return body.result
}

/** Logs in as `login` on database `db`; returns the Authorization header for later calls. */
export async function trytonLogin(port: number, db: string, login: string, password: Secret): Promise<string> {
  const r = (await trytonRpc(port, `${db}/`, 'common.db.login', [login, {password: password.reveal()}, 'fr'])) as [number, string]
  if (!Array.isArray(r) || typeof r[0] !== 'number') throw new UserError(ErrorCode.IMAGE_INVALID, `Tryton login on ${db} returned no session`)
  return `Session ${Buffer.from(`${login}:${r[0]}:${r[1]}`).toString('base64')}`
}

/** The Tryton series of an image ("7.0"), from its tryton-server package, if it has one. */
export function trytonSeriesOf(manifest: {packages: {name: string; version: string}[]}): string | undefined {
  const v = manifest.packages.find((p) => p.name === 'tryton-server')?.version
  const m = v ? /^(?:\d+:)?(\d+\.\d+)\./.exec(v) : null
  return m ? m[1] : undefined
}

export async function testImage(opts: BootTestOptions): Promise<BootTestResult> {
  const {io} = opts
  const env = opts.env ?? process.env
  const root = opts.root ?? imagesDir(env)
  const [{QemuVm, userNetFor, writeSeedImage}, {generatePassword}] = await Promise.all([import('../qemu/index.js'), import('../secrets/store.js')])
  const {manifest, diskPath} = await verifyImage(opts.version, {root})
  const vmDir = join(stateDir(env), 'image-test', `${manifest.name}-${manifest.version}-${process.pid}`)
  const passwords = {sql: generatePassword(), tryton: generatePassword(), ami: generatePassword()}
  type Vm = Awaited<ReturnType<typeof QemuVm.launch>>
  interface Ctx {
    vm?: Vm
    bootStarted?: number
    bootToHealthyS?: number
    health?: HealthReport
    modules?: string[]
    rebootedHealthy: boolean
  }
  const healthTimeout = opts.healthTimeoutMs ?? 8 * 60_000
  /** How long one pgi-health call waits in the guest for the server to turn healthy. */
  const HEALTH_WAIT_S = 60

  const health = async (vm: Vm): Promise<{code: number; report?: HealthReport; raw: string}> => {
    // --wait: pgi-health polls in the guest and answers as soon as the server is healthy (one
    // Python process instead of one per poll, each taking emulated CPU from the services that are
    // starting); an image whose pgi-health predates the option ignores it and answers at once
    const r = await vm.qga({timeoutMs: 30_000}).run(['/usr/local/sbin/pgi-health', '--wait', String(HEALTH_WAIT_S)], {timeoutMs: 180_000 + HEALTH_WAIT_S * 1000})
    let report: HealthReport | undefined
    try {
      report = JSON.parse(r.stdout) as HealthReport
    } catch {
      // not JSON yet (tools still starting): reported by the caller
    }
    return {code: r.exitcode, report, raw: (r.stdout + r.stderr).slice(-500)}
  }

  const waitHealthy = async (vm: Vm, update: (t: string) => void): Promise<HealthReport> => {
    const deadline = Date.now() + healthTimeout
    const qga = vm.qga({timeoutMs: 5000})
    update('waiting for the guest agent')
    await qga.waitReady(healthTimeout)
    let last = ''
    while (Date.now() < deadline) {
      if (!vm.isRunning()) throw new UserError(ErrorCode.UNHEALTHY, `the VM stopped while booting:\n${await vm.serialTail(30)}`, {exitCode: ExitCode.UNHEALTHY})
      const h = await health(vm).catch((e: Error) => ({code: -1, report: undefined, raw: e.message}))
      if (h.code === 0 && h.report?.healthy) return h.report
      last = h.report ? h.report.problems.join('; ') : h.raw
      update(`not healthy yet: ${last.slice(0, 100)}`)
      await sleep(3000)
    }
    throw new UserError(ErrorCode.UNHEALTHY, `${manifest.name} ${manifest.version} did not become healthy within ${healthTimeout / 1000} s: ${last}`, {
      exitCode: ExitCode.UNHEALTHY,
      details: {vmDir, serialLog: join(vmDir, 'serial.log')},
      suggestions: [`Read the guest's console log: ${join(vmDir, 'serial.log')} (kept; rerun with --keep to keep it after success).`],
    })
  }

  const guest = async (vm: Vm, argv: string[], input?: string, timeoutMs = 120_000): Promise<string> => {
    const r = await vm.qga({timeoutMs: 30_000}).run(argv, {input, timeoutMs})
    if (r.exitcode !== 0) throw new UserError(ErrorCode.IMAGE_INVALID, `${argv.join(' ')} failed in the guest (exit ${r.exitcode}): ${r.stderr.trim().slice(-500)}`)
    return r.stdout
  }

  const ctx: Ctx = {rebootedHealthy: false}
  let ok = false
  const steps: Step<Ctx>[] = [
    {
      title: `Boot ${manifest.name} ${manifest.version} with a ${opts.dataDisk ? 'given' : 'blank'} data disk`,
      run: async (c) => {
        await rm(vmDir, {recursive: true, force: true})
        await mkdir(vmDir, {recursive: true})
        const os = join(vmDir, 'os.qcow2')
        // the published image is never written: the VM runs on a copy-on-write overlay
        await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', diskPath, os], {}, io)
        const data = opts.dataDisk ?? join(vmDir, 'data.qcow2')
        if (!opts.dataDisk) await run('qemu-img', ['create', '-q', '-f', 'qcow2', data, '8G'], {}, io)
        const seed = join(vmDir, 'seed.iso')
        await writeSeedImage({hostname: 'pgi-test', user: 'ami', nics: [{name: 'eth0', ipconfig: {ip: '10.0.2.15/24', gw: '10.0.2.2'}}]}, seed, io)
        const ports = manifest.ports ?? {}
        // https: the web client and the teachers' console (images that publish it)
        const forwards = Object.entries({jsonrpc: ports.jsonrpc ?? 8000, web: ports.web ?? 80, ...(ports.https ? {https: ports.https} : {})}).map(([name, guestPort]) => ({
          name,
          guestPort,
        }))
        c.bootStarted = Date.now()
        c.vm = await QemuVm.launch(
          {
            name: `image-test-${manifest.version}`,
            dir: vmDir,
            memoryMiB: opts.memoryMiB ?? 2048,
            cpus: 2,
            disks: [
              {file: os, format: 'qcow2', id: 'virtio0'},
              {file: data, format: data.endsWith('.qcow2') ? 'qcow2' : 'raw', id: 'virtio1', serial: 'pgi-data'},
            ],
            seedImage: seed,
            network: userNetFor('10.0.2.15', 24, '10.0.2.2', forwards),
          },
          io,
        )
        return `accel ${c.vm.accel}, ports ${c.vm.forwards.map((f) => `${f.name}→${f.hostPort}`).join(' ')}`
      },
    },
    {
      title: 'Wait for pgi-health to report healthy',
      run: async (c, update) => {
        c.health = await waitHealthy(c.vm!, update)
        c.bootToHealthyS = Math.round((Date.now() - c.bootStarted!) / 100) / 10
        return `${c.bootToHealthyS} s, trytond ${String(c.health.checks.trytond?.version)}`
      },
    },
    {
      title: 'Apply pgi-configure with generated passwords (guest agent stdin)',
      run: async (c) => {
        const input = JSON.stringify({
          sql_admin: {login: 'pgi_admin', password: passwords.sql.reveal()},
          tryton_admin: {login: 'admin', password: passwords.tryton.reveal()},
          ami: {login: 'ami', password: passwords.ami.reveal()},
        })
        const out = JSON.parse(await guest(c.vm!, ['/usr/local/sbin/pgi-configure'], input)) as {changed: string[]}
        for (const p of [passwords.sql, passwords.tryton, passwords.ami]) {
          if (JSON.stringify(out).includes(p.reveal())) throw new UserError(ErrorCode.IMAGE_INVALID, 'pgi-configure printed a secret')
        }
        return out.changed.join(', ')
      },
    },
    {
      title: 'The teachers\' console answers over HTTPS (the VM\'s own certificate) and the AMI logs in with the SQL administrator\'s codes',
      skip: () => (manifest.ports?.https ? false : 'the image publishes no HTTPS port'),
      run: async (c) => {
        const port = c.vm!.forwards.find((f) => f.name === 'https')!.hostPort
        const tls = JSON.parse(await guest(c.vm!, ['/bin/cat', '/run/pgi/tls.json'])) as {sha256: string}
        const cert = await guest(c.vm!, ['/bin/cat', '/etc/pgi/tls/server.crt'])
        const r = await checkConsole(port, cert, tls.sha256, {login: 'pgi_admin', password: passwords.sql})
        return `certificate SHA-256 ${r.fingerprint.slice(0, 23)}…; login page ${r.loginPageMs ?? '?'} ms of server time; AMI logged in`
      },
    },
    {
      title: `Create database ${TEST_DB} with the French chart of accounts (account_fr)`,
      skip: () => (opts.quick ? 'quick test' : false),
      run: async (c) => {
        const existing = JSON.parse(await guest(c.vm!, ['/usr/local/sbin/pgi-db', 'list'])) as {name: string}[]
        if (existing.some((d) => d.name === TEST_DB)) return 'already there (given data disk)'
        const out = JSON.parse(await guest(c.vm!, ['/usr/local/sbin/pgi-db', 'create', TEST_DB, '--lang', 'fr', '--module', 'account_fr'], undefined, 30 * 60_000)) as {modules: string[]}
        c.modules = out.modules
        if (!out.modules.includes('account_fr')) throw new UserError(ErrorCode.IMAGE_INVALID, `account_fr is not activated in ${TEST_DB}: ${out.modules.join(', ')}`)
        return `${out.modules.length} modules`
      },
    },
    {
      title: 'Log in to Tryton over JSON-RPC as admin (and a wrong password is refused)',
      skip: () => (opts.quick ? 'quick test' : false),
      run: async (c) => {
        const port = c.vm!.forwards.find((f) => f.name === 'web')!.hostPort
        const version = await trytonRpc(port, '', 'common.server.version', [])
        const auth = await trytonLogin(port, TEST_DB, 'admin', passwords.tryton)
        const mods = (await trytonRpc(port, `${TEST_DB}/`, 'model.ir.module.search_read', [[['name', '=', 'account_fr']], 0, null, null, ['name', 'state'], {}], auth)) as {state: string}[]
        if (mods[0]?.state !== 'activated') throw new UserError(ErrorCode.IMAGE_INVALID, `account_fr is ${mods[0]?.state ?? 'missing'} in ${TEST_DB}`)
        const templates = (await trytonRpc(port, `${TEST_DB}/`, 'model.account.account.template.search_count', [[], {}], auth)) as number
        if (!(templates > 100)) throw new UserError(ErrorCode.IMAGE_INVALID, `only ${templates} account templates in ${TEST_DB}: the French chart is missing`)
        const wrong = await trytonLogin(port, TEST_DB, 'admin', generatePassword()).then(
          () => true,
          () => false,
        )
        if (wrong) throw new UserError(ErrorCode.IMAGE_INVALID, 'Tryton accepted a wrong admin password')
        return `trytond ${String(version)}, ${templates} account templates (PCG)`
      },
    },
    {
      title: 'Log in with the caller\'s own client',
      skip: () => (opts.quick ? 'quick test' : !opts.clientCheck ? 'no client given' : false),
      run: async (c) => {
        const port = (name: string) => c.vm!.forwards.find((f) => f.name === name)!.hostPort
        return opts.clientCheck!({
          webUrl: `http://127.0.0.1:${port('web')}/`,
          jsonrpcUrl: `http://127.0.0.1:${port('jsonrpc')}/`,
          database: TEST_DB,
          login: 'admin',
          password: passwords.tryton,
          trytonSeries: trytonSeriesOf(manifest),
        })
      },
    },
    {
      title: 'Reboot and check that everything is still there',
      run: async (c, update) => {
        const vm = c.vm!
        await vm.qga().shutdown('reboot')
        // the agent goes away during the reboot: wait for it to fail, then for health again
        const gone = Date.now() + 120_000
        while (Date.now() < gone) {
          const alive = await vm.qga({timeoutMs: 2000}).ping(2000).then(() => true, () => false)
          if (!alive) break
          await sleep(1000)
        }
        const h = await waitHealthy(vm, update)
        c.health = h
        if (!opts.quick) {
          const db = h.databases.find((d) => d.name === TEST_DB)
          if (!db || !db.modules.account_fr) throw new UserError(ErrorCode.IMAGE_INVALID, `after the reboot, database ${TEST_DB} with account_fr is gone: ${JSON.stringify(h.databases)}`)
          const port = vm.forwards.find((f) => f.name === 'jsonrpc')!.hostPort
          await trytonLogin(port, TEST_DB, 'admin', passwords.tryton)
        }
        c.rebootedHealthy = true
        return opts.quick ? 'healthy' : `healthy; ${TEST_DB} still there, admin logs in`
      },
    },
  ]
  // an interrupted test must not leave its VM running
  const onSignal = (sig: NodeJS.Signals) => {
    io.warn(`${sig}: stopping the test VM (folder kept: ${vmDir})`)
    void (ctx.vm?.stop({graceMs: 0}) ?? Promise.resolve()).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    await runSteps(io, steps, ctx)
    ok = true
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    // a clean power-off (the data disk may be the user's, --data-disk): health comes before
    // cloud-init has finished, and stopping its stages under software emulation takes a while
    await ctx.vm?.stop({graceMs: 90_000}).catch((e: Error) => io.warn(`could not stop the test VM: ${e.message}`))
    if (ok && !opts.keep) await rm(vmDir, {recursive: true, force: true})
    else io.info(`test VM folder kept: ${vmDir}`)
  }
  return {
    image: manifest.name,
    version: manifest.version,
    accel: ctx.vm!.accel,
    bootToHealthyS: ctx.bootToHealthyS!,
    database: opts.quick ? undefined : TEST_DB,
    modules: ctx.modules,
    rebootedHealthy: ctx.rebootedHealthy,
    health: ctx.health!,
    vmDir: opts.keep ? vmDir : undefined,
  }
}
