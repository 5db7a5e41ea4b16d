import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {StderrIo} from '../../../src/io.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import type {Establishment} from '../../../src/inventory/types.js'

import {cachedPgiImage} from '../../helpers/e2e-image.js'
import {POST_INVOICE, proteusFor, type PostedInvoice} from '../../helpers/proteus.js'
import {deployedQemuLab, expectOk, labPgi, stopQemuLab, type DeployedQemuLab} from '../../helpers/qemu-lab.js'

/**
 * The major-version rollout on a qemu lab, as a Région runs it through bin/run.js: one
 * establishment deployed on 1.x (Debian 12, Tryton 6.0, PostgreSQL 15), class data made with
 * proteus 6.0 (a company with the French chart, its fiscal year, parties, products, posted
 * customer invoices), then `pgi rollout plan 2.0.0` shows the migration and its space,
 * `pgi rollout start 2.0.0` carries the databases into PostgreSQL 17 and Tryton 7.0: proteus 7.0
 * logs in, the business figures (pgifigures.py: table counts, trial balance, posted invoices) are
 * identical, the old cluster is still on the data disk, read-only.
 *
 * Opt-in (PGI_E2E_MAJOR=1): a deploy, the class data, the swap and the migration under software
 * emulation take most of an hour. Both image lines come from PGI_E2E_IMAGES_DIR (or the e2e image
 * cache, built there once). PGI_E2E_MAJOR_INVOICES: invoices posted (default 3).
 */
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const INVOICES = Number(process.env.PGI_E2E_MAJOR_INVOICES ?? '3')

describe.skipIf(process.env.PGI_E2E_MAJOR !== '1')('major rollout 1.x → 2.0 on a qemu lab (PGI_E2E_MAJOR=1)', () => {
  let lab: DeployedQemuLab | undefined
  let partial: Pick<DeployedQemuLab, 'base' | 'labDir' | 'env'> | undefined
  let v2: {root: string; version: string}
  let api: PveApi
  let est: Establishment
  let figuresBefore: string
  const db = 'pgi'
  const pgi = (args: string[], timeoutMs?: number) => labPgi(lab!, args, timeoutMs)

  async function guest(cmd: string[]): Promise<string> {
    const r = await api.agentExec(est.node, est.vmid, cmd, {timeoutMs: 10 * 60_000})
    expect(r.exitcode, r.stderr).toBe(0)
    return r.stdout
  }

  beforeAll(async () => {
    v2 = await cachedPgiImage(io, '2')
    lab = await deployedQemuLab({prefix: 'pgi-e2e-major-', io, started: (l) => (partial = l)})
    const {loadValidInventory} = await import('../../../src/inventory/load.js')
    const {findEstablishment} = await import('../../../src/inventory/select.js')
    const {openInventoryStore} = await import('../../../src/fleet/open.js')
    const {Hypervisors} = await import('../../../src/hypervisors.js')
    const inv = await loadValidInventory(lab.env.PGI_INVENTORY!)
    est = findEstablishment(inv, lab.uai)
    const store = await openInventoryStore(inv, lab.env.PGI_SECRETS_DIR!, lab.env)
    api = await new Hypervisors(inv, {store, io, env: lab.env}).get(est.hypervisor)
  }, 90 * 60_000)

  afterAll(() => stopQemuLab(lab ?? partial), 10 * 60_000)

  it('class data through proteus 6.0: posted customer invoices in the deployed database', async () => {
    const proteus = await proteusFor('6.0')
    for (let i = 1; i <= INVOICES; i++) {
      const out = await proteus.python(POST_INVOICE, {url: lab!.rpcUrl, database: db, login: lab!.handoff.trytonAdmin.login, password: lab!.handoff.trytonAdmin.password.reveal(), party: `Client ${i}`, product: `Article ${i}`}, 20 * 60_000)
      const p = JSON.parse(out.trim().split('\n').slice(-1)[0]!) as PostedInvoice
      expect([p.state, p.total]).toEqual(['posted', '360.00'])
    }
    figuresBefore = await guest(['/usr/local/sbin/pgi-backup', '--figures', db])
    const f = JSON.parse(figuresBefore) as {counts: Record<string, number>; posted_invoices: unknown[]}
    expect(f.posted_invoices).toHaveLength(INVOICES)
    expect(f.counts.invoices).toBe(INVOICES)
  }, 90 * 60_000)

  it('pgi rollout plan 2.0.0 shows the migration and the space it needs', async () => {
    const r = await pgi(['rollout', 'plan', v2.version, lab!.uai, '--images-dir', v2.root, '--json'])
    expectOk(r)
    const row = r.json!.result.rows[0]
    expect(row.migration).toMatchObject({fromPg: '15', toPg: '17'})
    expect(row.migration.needBytes).toBeGreaterThan(0)
    expect(row.migration.freeBytes).toBeGreaterThan(row.migration.needBytes)
    expect(row.action).toBe('update')
  }, 10 * 60_000)

  it('pgi rollout start 2.0.0 carries every database into PostgreSQL 17 / Tryton 7.0 with the same figures', async () => {
    expectOk(await pgi(['rollout', 'stage', v2.version, lab!.uai, '--images-dir', v2.root, '--json'], 30 * 60_000))
    const r = await pgi(['rollout', 'start', v2.version, lab!.uai, '--images-dir', v2.root, '--yes', '--json', '--agent-timeout', '900', '--health-timeout', '1800'], 120 * 60_000)
    const res = r.json?.result
    expect(res?.establishments?.map((e: {outcome: string; reason?: string}) => `${e.outcome} ${e.reason ?? ''}`.trim()), r.stderr.slice(-3000)).toEqual(['updated'])
    expect(r.exitCode).toBe(0)
    // the same business figures, read on the migrated database
    expect(JSON.parse(await guest(['/usr/local/sbin/pgi-backup', '--figures', db]))).toEqual(JSON.parse(figuresBefore))
    // the guest's record of the migration: committed, every database done
    const st = JSON.parse(await guest(['/bin/cat', '/srv/pgi/.pgi/major-migration.json'])) as {state: string; from_pg: string; to_pg: string; databases: {name: string; step: string; figure_differences: string[]}[]}
    expect([st.state, st.from_pg, st.to_pg]).toEqual(['committed', '15', '17'])
    expect(st.databases.find((d) => d.name === db)).toMatchObject({step: 'done', figure_differences: []})
    // the old cluster: still there, read-only
    expect((await guest(['/usr/bin/stat', '-c', '%a', '/srv/pgi/postgresql/15/main'])).trim()).toBe('500')
    // a Tryton 7.0 client logs in to the migrated database
    const proteus = await proteusFor('7.0')
    const login = await proteus.login(lab!.rpcUrl, db, lab!.handoff.trytonAdmin.login, lab!.handoff.trytonAdmin.password.reveal())
    expect(login.server).toMatch(/^7\.0\./)
    expect(login.modules.account_fr).toBe('activated')
  }, 150 * 60_000)
})
