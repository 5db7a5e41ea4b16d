import {cp, mkdir, readFile, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {spawnDetached} from '../../../src/exec.js'
import {labConnection} from '../../../src/lab/handoff-connection.js'
import {buildImage} from '../../../src/image/build.js'
import type {Establishment} from '../../../src/inventory/types.js'
import {StderrIo} from '../../../src/io.js'
import type {PveApi} from '../../../src/proxmox/types.js'

import {CLI, ROOT} from '../../helpers/cli.js'
import {cachedPgiImage} from '../../helpers/e2e-image.js'
import {CLASS_DATA, proteusFor} from '../../helpers/proteus.js'
import {deployedQemuLab, expectOk, labPgi, openLabHandoff, stopQemuLab, type DeployedQemuLab, type DeployedSite} from '../../helpers/qemu-lab.js'
import {hasChromium, saoLogin} from '../../helpers/sao.js'

/**
 * The major-version rollout on a qemu lab, as a Région runs it through bin/run.js: two
 * establishments deployed on 1.x (Debian 12, Tryton 6.0, PostgreSQL 15), each with a term of class
 * work made with proteus 6.0 (test/helpers/class_data.py: 20 parties, products, 50 customer
 * invoices posted and paid, January's period closed) in its database `pgi` and copies of it
 * (`pgi db copy`, PGI_E2E_MAJOR_COPIES, default 1: `classe_b`), then:
 *
 * 1. `pgi rollout plan 2.0.0` shows the migration and its space;
 * 2. a deliberately broken 2.0.1 (the 2.x recipe whose pgi-upgrade fails the migration of the
 *    last database at trytond-admin, the others carried across first) → both establishments rolled back to 1.x with the reason, their
 *    6.0 databases intact (same figures, proteus 6.0 logs in);
 * 3. `pgi rollout start 2.0.0` of both, pgi killed with SIGKILL while both guests migrate and
 *    the second VM hard-stopped while trytond-admin runs → `pgi rollout resume` finishes both:
 *    the first guest's migration went on alone, the second VM is started again and its guest
 *    resumes the migration (the unfinished database carried across again);
 * 4. on both: every database's business figures (pgifigures.py: table counts, trial balances,
 *    posted invoices) identical to before, proteus 7.0 and the 7.0 web client (sao, chromium) log
 *    in, the migration recorded committed, the old cluster still there read-only, and the AMI's
 *    new handoff names the Tryton 7.0 desktop client.
 *
 * Opt-in (PGI_E2E_MAJOR=1): under software emulation this takes one to two hours. Both image lines
 * come from PGI_E2E_IMAGES_DIR (or the e2e image cache, built there once); 2.0.1 is built here.
 * PGI_E2E_MAJOR_INVOICES (default 50), PGI_E2E_MAJOR_COPIES (default 1) and PGI_E2E_MAJOR_PHASES
 * (default `broken,kill,hardstop`: drop one to skip it; without kill and hardstop the rollout runs
 * uninterrupted).
 */
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const INVOICES = Number(process.env.PGI_E2E_MAJOR_INVOICES ?? '50')
const PHASES = new Set((process.env.PGI_E2E_MAJOR_PHASES ?? 'broken,kill,hardstop').split(',').map((s) => s.trim()))
const COPIES = Number(process.env.PGI_E2E_MAJOR_COPIES ?? '1')
const DATABASES = ['pgi', ...Array.from({length: COPIES}, (_, i) => `classe_${String.fromCharCode(98 + i)}`)]
/** The database the broken 2.0.1's migration fails on: the last one (the others are carried across first). */
const FAILING = DATABASES.at(-1)!
const BROKEN = '2.0.1'
const note = (s: string) => console.log(`[major e2e ${new Date().toISOString().slice(11, 19)}] ${s}`)

interface Migration {
  state: string
  to_version?: string
  from_pg: string
  to_pg: string
  databases: {name: string; step: string; figure_differences: string[]; seconds?: Record<string, number>}[]
}

describe.skipIf(process.env.PGI_E2E_MAJOR !== '1')('major rollout 1.x → 2.0 on a qemu lab (PGI_E2E_MAJOR=1)', () => {
  let lab: DeployedQemuLab | undefined
  let partial: Pick<DeployedQemuLab, 'base' | 'labDir' | 'env'> | undefined
  let v2: {root: string; version: string}
  let v1: string
  let imagesRoot: string
  let api: PveApi
  let sites: {est: Establishment; site: DeployedSite}[] = []
  let broken: Promise<string>
  const figuresBefore = new Map<string, string>()
  const handoffs = new Map<string, string>()
  const pgi = (args: string[], timeoutMs?: number) => labPgi(lab!, args, timeoutMs)
  const rolloutArgs = (cmd: 'start' | 'resume', version: string | undefined, uais: string[]) => [
    'rollout', cmd, ...(version ? [version] : []), ...uais, '--images-dir', imagesRoot, '--yes', '--json',
    '--lab-dir', lab!.labDir, '--agent-timeout', '900', '--health-timeout', '1800',
  ]

  async function guest(est: Establishment, cmd: string[]): Promise<string> {
    const r = await api.agentExec(est.node, est.vmid, cmd, {timeoutMs: 10 * 60_000})
    expect(r.exitcode, r.stderr).toBe(0)
    return r.stdout
  }
  const figures = (est: Establishment, db: string) => guest(est, ['/usr/local/sbin/pgi-backup', '--figures', db])
  async function migration(est: Establishment): Promise<Migration | undefined> {
    try {
      const r = await api.agentExec(est.node, est.vmid, ['/bin/cat', '/srv/pgi/.pgi/major-migration.json'], {timeoutMs: 20_000})
      return r.exitcode === 0 ? (JSON.parse(r.stdout) as Migration) : undefined
    } catch {
      return undefined // the VM is rebooting into the new OS: no agent yet
    }
  }
  /** The Tryton server of `est` now: the lab forwards new host ports each time a VM starts (a swap, a rollback). */
  async function rpcUrl(est: Establishment): Promise<string> {
    const c = await labConnection(lab!.labDir, {waitMs: 60_000})(est)
    return `http://${c.host}:${c.jsonrpcPort}/`
  }
  async function healthVersion(est: Establishment): Promise<string | undefined> {
    return (JSON.parse(await guest(est, ['/usr/local/sbin/pgi-health'])) as {image?: {version?: string}}).image?.version
  }

  /** The 2.x recipe as 2.0.1, its pgi-upgrade failing the migration of FAILING at trytond-admin. */
  async function buildBroken(): Promise<string> {
    const dir = join(lab!.base, 'recipes', BROKEN)
    await cp(join(ROOT, 'images', 'pgi-tryton'), dir, {recursive: true})
    const yaml = join(dir, 'image@2.yaml')
    await writeFile(yaml, (await readFile(yaml, 'utf8')).replace(/^version: .*$/m, `version: ${BROKEN}`))
    const tool = join(dir, 'files', 'usr', 'local', 'sbin', 'pgi-upgrade')
    const text = await readFile(tool, 'utf8')
    const call = 'done = pgimajor.migrate(req)'
    expect(text, 'pgi-upgrade calls pgimajor.migrate(req): the broken image patches that call').toContain(call)
    const hook = `(lambda db, step: (_ for _ in ()).throw(RuntimeError('deliberately broken 2.0.1')) if (db, step) == ('${FAILING}', 'admin') else None)`
    await writeFile(tool, text.replace(call, `done = pgimajor.migrate(req, ${hook})`))
    const t = Date.now()
    const r = await buildImage({recipe: yaml, version: BROKEN, out: imagesRoot, io, allowLockDrift: true, env: {...process.env, SOURCE_DATE_EPOCH: '1767225600'}})
    note(`broken ${r.version} built in ${Math.round((Date.now() - t) / 1000)} s`)
    return r.version
  }

  /** Waits until `until` says yes about the establishment's migration (polled over the agent). */
  async function waitMigration(est: Establishment, what: string, until: (m: Migration) => boolean, child?: {pid?: number}): Promise<Migration> {
    const deadline = Date.now() + 90 * 60_000
    for (;;) {
      const m = await migration(est)
      if (m && until(m)) return m
      if (child?.pid) {
        try {
          process.kill(child.pid, 0)
        } catch {
          throw new Error(`the rollout of ${est.uai} ended before ${what}`)
        }
      }
      if (Date.now() > deadline) throw new Error(`${est.uai}: never reached ${what} (last: ${JSON.stringify(m)})`)
      await new Promise((r) => setTimeout(r, 3000))
    }
  }

  function keepHandoffs(json: {result?: {establishments?: {uai: string; handoff?: string}[]}} | undefined) {
    for (const e of json?.result?.establishments ?? []) if (e.handoff) handoffs.set(e.uai, e.handoff)
  }

  beforeAll(async () => {
    v2 = await cachedPgiImage(io, '2')
    lab = await deployedQemuLab({prefix: 'pgi-e2e-major-', io, sites: 2, started: (l) => (partial = l)})
    const {loadValidInventory} = await import('../../../src/inventory/load.js')
    const {openInventoryStore} = await import('../../../src/fleet/open.js')
    const {Hypervisors} = await import('../../../src/hypervisors.js')
    // one wave: both establishments at once (the lab puts the second one in "pilot")
    const inventoryFile = lab.env.PGI_INVENTORY!
    await writeFile(inventoryFile, (await readFile(inventoryFile, 'utf8')).replace(/ring: pilot/g, 'ring: canary'))
    const inv = await loadValidInventory(inventoryFile)
    sites = lab.sites.map((site) => ({site, est: inv.establishments.find((e) => e.uai === site.uai)!}))
    const store = await openInventoryStore(inv, lab.env.PGI_SECRETS_DIR!, lab.env)
    api = await new Hypervisors(inv, {store, io, env: lab.env}).get(sites[0]!.est.hypervisor)
    v1 = (await healthVersion(sites[0]!.est))!
    // the versions of this test in its own images folder: 2.0.0 (copied from the cache), 2.0.1 built
    imagesRoot = join(lab.base, 'images')
    await mkdir(join(imagesRoot, 'pgi-tryton'), {recursive: true})
    await cp(join(v2.root, 'pgi-tryton', v2.version), join(imagesRoot, 'pgi-tryton', v2.version), {recursive: true})
    await cp(join(v2.root, 'trusted-keys'), join(imagesRoot, 'trusted-keys'), {recursive: true})
    if (PHASES.has('broken')) {
      broken = buildBroken()
      broken.catch(() => undefined) // reported by the test that needs it
    }
  }, 90 * 60_000)

  afterAll(() => stopQemuLab(lab ?? partial), 10 * 60_000)

  it('class data through proteus 6.0: a term of invoices, paid, a closed period, in two databases of each establishment', async () => {
    const proteus = await proteusFor('6.0')
    const year = new Date().getFullYear()
    const t = Date.now()
    await Promise.all(
      sites.map(async ({site}) => {
        const out = await proteus.python(CLASS_DATA, {url: site.rpcUrl, database: 'pgi', login: site.handoff.trytonAdmin.login, password: site.handoff.trytonAdmin.password.reveal(), year, invoices: INVOICES}, 120 * 60_000)
        const made = JSON.parse(out.trim().split('\n').slice(-1)[0]!) as {invoices: number; paid: number; closed: string[] | null}
        expect(made).toMatchObject({invoices: INVOICES, paid: INVOICES, closed: [`${year}-01`, 'close']})
      }),
    )
    note(`class data (${INVOICES} invoices a site) made in ${Math.round((Date.now() - t) / 1000)} s`)
    for (const {est} of sites) {
      for (const db of DATABASES.slice(1)) expectOk(await pgi(['db', 'copy', est.uai, 'pgi', db, '--json'], 30 * 60_000))
      for (const db of DATABASES) {
        const f = await figures(est, db)
        const parsed = JSON.parse(f) as {counts: Record<string, number>; posted_invoices: unknown[]}
        expect(parsed.counts.invoices).toBe(INVOICES)
        expect(parsed.counts.parties).toBeGreaterThanOrEqual(20)
        expect(parsed.posted_invoices).toHaveLength(INVOICES)
        figuresBefore.set(`${est.uai}/${db}`, f)
      }
    }
  }, 180 * 60_000)

  it('pgi rollout plan 2.0.0 shows the migration and the space it needs', async () => {
    const r = await pgi(['rollout', 'plan', v2.version, '--all', '--images-dir', imagesRoot, '--json'])
    expectOk(r)
    expect(r.json!.result.rows).toHaveLength(sites.length)
    for (const row of r.json!.result.rows) {
      expect(row.migration).toMatchObject({fromPg: '15', toPg: '17'})
      expect(row.migration.needBytes).toBeGreaterThan(0)
      expect(row.migration.freeBytes).toBeGreaterThan(row.migration.needBytes)
      expect(row.action).toBe('update')
    }
  }, 10 * 60_000)

  it.skipIf(!PHASES.has('broken'))(`a broken 2.0.1 (its migration fails on ${FAILING}) brings both establishments back on 1.x with the reason, their 6.0 databases intact`, async () => {
    const version = await broken
    expectOk(await pgi(['rollout', 'stage', version, '--all', '--images-dir', imagesRoot, '--json'], 30 * 60_000))
    const t = Date.now()
    const r = await pgi(rolloutArgs('start', version, ['--all']), 150 * 60_000)
    note(`broken rollout ended in ${Math.round((Date.now() - t) / 1000)} s`)
    const res = r.json?.result as {establishments: {uai: string; outcome: string; reason?: string}[]} | undefined
    expect(res?.establishments.map((e) => e.outcome), r.stderr.slice(-3000)).toEqual(sites.map(() => 'rolled-back'))
    for (const e of res!.establishments) expect(e.reason).toContain(`database ${FAILING}, step admin: deliberately broken 2.0.1`)
    expect(r.exitCode).toBe(4)
    const proteus = await proteusFor('6.0')
    for (const {est, site} of sites) {
      expect(await healthVersion(est)).toBe(v1)
      for (const db of DATABASES) expect(JSON.parse(await figures(est, db))).toEqual(JSON.parse(figuresBefore.get(`${est.uai}/${db}`)!))
      const login = await proteus.login(await rpcUrl(est), FAILING, site.handoff.trytonAdmin.login, site.handoff.trytonAdmin.password.reveal())
      expect(login.server).toMatch(/^6\.0\./)
    }
  }, 180 * 60_000)

  it('pgi rollout start 2.0.0 of both establishments, pgi killed with SIGKILL during their migrations and the second VM hard-stopped in trytond-admin: pgi rollout resume finishes both', async () => {
    expectOk(await pgi(['rollout', 'stage', v2.version, '--all', '--images-dir', imagesRoot, '--json'], 30 * 60_000))
    const interrupt = PHASES.has('kill') || PHASES.has('hardstop')
    if (!interrupt) {
      const r = await pgi(rolloutArgs('start', v2.version, ['--all']), 240 * 60_000)
      keepHandoffs(r.json)
      expect(r.json?.result?.establishments?.map((e: {outcome: string; reason?: string}) => `${e.outcome} ${e.reason ?? ''}`.trim()), r.stderr.slice(-3000)).toEqual(sites.map(() => 'updated'))
      return
    }
    const log = join(lab!.base, 'rollout-interrupted.log')
    const child = spawnDetached('node', [CLI, ...rolloutArgs('start', v2.version, ['--all'])], {env: lab!.env as Record<string, string>, logFile: log})
    // the last establishment in trytond-admin (hard-stopped there), the first one migrating too
    const [first, last] = [sites[0]!.est, sites.at(-1)!.est]
    // (the status file may still hold the broken 2.0.1's run: only this rollout's counts)
    const ours = (s: Migration) => s.state === 'running' && s.to_version === v2.version
    const m = await waitMigration(last, 'trytond-admin', (s) => ours(s) && s.databases.some((d) => d.step === 'admin'), child)
    if (sites.length > 1) await waitMigration(first, 'the migration', (s) => ours(s) && s.databases.some((d) => d.step !== 'pending'), child)
    process.kill(child.pid!, 'SIGKILL')
    note(`pgi killed; ${last.uai} at ${JSON.stringify(m.databases.map((d) => [d.name, d.step]))}`)
    if (PHASES.has('hardstop')) {
      await api.stopVm(last.node, last.vmid, {timeoutMs: 120_000})
      note(`${last.uai}: VM ${last.vmid} hard-stopped in trytond-admin`)
    }
    const r = await pgi(rolloutArgs('resume', undefined, []), 240 * 60_000)
    keepHandoffs(r.json)
    const outcomes = (r.json?.result?.establishments ?? []).map((e: {uai: string; outcome: string; reason?: string}) => `${e.uai} ${e.outcome} ${e.reason ?? ''}`.trim())
    expect(outcomes, `exit ${r.exitCode} ${r.stdout.slice(-1500)}\n${r.stderr.slice(-3000)}\n${(await readFile(log, 'utf8').catch(() => '')).slice(-3000)}`).toEqual(sites.map(({est}) => `${est.uai} updated`))
    for (const {est} of sites) expect((await migration(est))!.state).toBe('committed')
    // the hard-stopped guest booted twice into the new OS and redid the database it was migrating
    if (PHASES.has('hardstop')) expect(((await migration(last)) as Migration & {boots?: number}).boots).toBeGreaterThanOrEqual(2)
  }, 300 * 60_000)

  it('on 7.0 everywhere: every database has the same figures, proteus 7.0 and the web client log in, the old cluster is kept read-only, the AMI has a handoff naming Tryton 7.0', async () => {
    const proteus = await proteusFor('7.0')
    for (const {est, site} of sites) {
      expect(await healthVersion(est)).toBe(v2.version)
      const st = (await migration(est))!
      expect([st.state, st.from_pg, st.to_pg]).toEqual(['committed', '15', '17'])
      for (const db of DATABASES) {
        expect(st.databases.find((d) => d.name === db)).toMatchObject({step: 'done', figure_differences: []})
        expect(JSON.parse(await figures(est, db)), `${est.uai}/${db}`).toEqual(JSON.parse(figuresBefore.get(`${est.uai}/${db}`)!))
        const login = await proteus.login(await rpcUrl(est), db, site.handoff.trytonAdmin.login, site.handoff.trytonAdmin.password.reveal())
        expect(login.server).toMatch(/^7\.0\./)
        expect(login.modules.account_fr).toBe('activated')
      }
      note(`${est.uai}: seconds per step ${JSON.stringify(st.databases.map((d) => [d.name, d.seconds]))}`)
      expect((await guest(est, ['/usr/bin/stat', '-c', '%a', '/srv/pgi/postgresql/15/main'])).trim()).toBe('500')
      if (!hasChromium()) throw new Error("this test needs Debian's chromium (apt-get install chromium)")
      const web = await saoLogin(await rpcUrl(est), 'pgi', site.handoff.trytonAdmin.login, site.handoff.trytonAdmin.password.reveal())
      expect(web.version).toMatch(/^7\.0\./)
      expect(web.menu.length).toBeGreaterThan(3)
      // the AMI's new handoff: same credentials, the 7.0 desktop client
      const file = handoffs.get(est.uai)
      expect(file, `no new handoff reported for ${est.uai}`).toBeDefined()
      const doc = await openLabHandoff(lab!.labDir, dirname(file!), est.uai)
      expect(doc.desktopClient.client).toBe('Tryton 7.0')
      expect(`http://${doc.desktopClient.host}:${doc.desktopClient.port}/`).toBe(await rpcUrl(est))
      expect(doc.trytonAdmin.password.reveal()).toBe(site.handoff.trytonAdmin.password.reveal())
    }
  }, 60 * 60_000)
})
