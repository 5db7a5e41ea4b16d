import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {parseHandoff, type HandoffDocument} from '../../../src/fleet/handoff.js'
import {run} from '../../../src/exec.js'
import {StderrIo} from '../../../src/io.js'

import {cachedPgiImage} from '../../helpers/e2e-image.js'
import {proteusFor} from '../../helpers/proteus.js'
import {hasChromium, saoLogin} from '../../helpers/sao.js'

/**
 * A fresh deploy of the 2.x image line (Debian 13, Tryton 7.0, PostgreSQL 17) on a qemu-backed lab,
 * as a Région technician runs it (`pgi deploy` through bin/run.js): the AMI's handoff names the
 * Tryton 7.0 desktop client, a database made from the 7.0 template (`pgi-db create`, through the
 * guest agent as pgi does) takes the handoff's admin login with proteus 7.0 and with the Tryton 7.0
 * web client in Debian's chromium (playwright-core) through the lab's forwarded web port, and
 * `pgi status` reports the establishment healthy on 2.x.
 *
 * Opt-in (PGI_E2E_IMAGE2=1): the 2.x build and a deploy under software emulation take ~20 minutes.
 * The image comes from the same cache as test/e2e/image (or PGI_E2E_IMAGES_DIR).
 */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)

describe.skipIf(process.env.PGI_E2E_IMAGE2 !== '1')('a fresh deploy of pgi-tryton 2.x on a qemu lab (PGI_E2E_IMAGE2=1)', () => {
  let base: string
  let labDir: string
  let env: Record<string, string>
  let images: {root: string; version: string}
  let uai: string
  let handoff: HandoffDocument

  async function pgi(args: string[], opts: {allowFailure?: boolean} = {}) {
    const r = await run('node', [CLI, ...args], {env, allowFailure: true, timeoutMs: 40 * 60_000})
    if (r.exitCode !== 0 && !opts.allowFailure) throw new Error(`pgi ${args.join(' ')} exited ${r.exitCode}:\n${r.stderr.slice(-3000)}`)
    return r
  }

  beforeAll(async () => {
    images = await cachedPgiImage(io, '2')
    base = await mkdtemp(join(tmpdir(), 'pgi-e2e-deploy2-'))
    labDir = join(base, 'lab')
    env = {...(process.env as Record<string, string>), PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
    await pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '1', '--dir', labDir, '--json'])
    env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    uai = (JSON.parse((await pgi(['inventory', 'list', '--json'])).stdout) as {result: {uai: string}[]}).result[0]!.uai
  }, 60 * 60_000)

  afterAll(async () => {
    if (labDir) await pgi(['lab', 'stop', '--dir', labDir], {allowFailure: true})
    if (base && !process.env.PGI_E2E_KEEP) await rm(base, {recursive: true, force: true})
  }, 5 * 60_000)

  it('deploys 2.x and hands the codes over, naming the Tryton 7.0 desktop client', async () => {
    const r = await pgi(['deploy', uai, '--yes', '--json', '--image', images.version, '--images-dir', images.root, '--lab-dir', labDir, '--handoff-dir', join(base, 'handoffs'), '--health-timeout', '1800', '--agent-timeout', '900'])
    const outcomes = (JSON.parse(r.stdout) as {result: {result: {outcomes: {outcome: string; databases?: {name: string; outcome: string}[]}[]}}}).result.result.outcomes
    expect(outcomes.map((o) => o.outcome)).toEqual(['created'])
    // the declared database (the inventory's default: pgi), made by deploy, logged into by its check
    expect(outcomes[0]!.databases).toEqual([expect.objectContaining({name: 'pgi', outcome: 'created', loginSeconds: expect.any(Number)})])
    const file = join(base, 'handoffs', `${uai}.handoff.age`)
    const text = (await run('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), file])).stdout
    handoff = parseHandoff(text, file)
    expect(handoff.desktopClient.client).toBe('Tryton 7.0')
    expect(text).toContain('Installez le client Tryton en version 7.0')
    expect(text).toContain('~/.config/tryton/7.0/profiles.cfg')
  }, 60 * 60_000)

  it('the handoff\'s admin logs in with proteus 7.0 to the database deploy made from the 7.0 template', async () => {
    const db = handoff.desktopClient.database
    expect(db).toBe('pgi')
    const {loadValidInventory} = await import('../../../src/inventory/load.js')
    const {findEstablishment} = await import('../../../src/inventory/select.js')
    const {openInventoryStore} = await import('../../../src/fleet/open.js')
    const {Hypervisors} = await import('../../../src/hypervisors.js')
    const inv = await loadValidInventory(env.PGI_INVENTORY!)
    const est = findEstablishment(inv, uai)
    const store = await openInventoryStore(inv, env.PGI_SECRETS_DIR!, env)
    const api = await new Hypervisors(inv, {store, io, env}).get(est.hypervisor)
    // deploy made the declared database (the default: pgi) from the 7.0 template
    const listed = await api.agentExec(est.node, est.vmid, ['/usr/local/sbin/pgi-db', 'list'], {timeoutMs: 10 * 60_000})
    expect(listed.exitcode, listed.stderr).toBe(0)
    expect((JSON.parse(listed.stdout) as {name: string; kind: string}[]).find((x) => x.name === db)).toMatchObject({kind: 'create'})
    expect(handoff.databases?.map((x) => x.name)).toEqual([db])
    // a copy of the image's template database, recorded by pgi-db in the database itself, under Tryton 7.0
    const meta = await api.agentExec(est.node, est.vmid, ['/usr/sbin/runuser', '-u', 'postgres', '--', '/usr/bin/psql', '-d', db, '-XAtc', "SELECT key || '=' || value FROM pgi_meta WHERE key IN ('kind', 'source', 'tryton_series') ORDER BY key"], {timeoutMs: 5 * 60_000})
    expect(meta.exitcode, meta.stderr).toBe(0)
    expect(meta.stdout.trim().split('\n')).toEqual(['kind=create', 'source=template', 'tryton_series=7.0'])
    const proteus = await proteusFor('7.0')
    // trytond's own port (the handoff's desktop profile), plain HTTP: the handoff's https address
    // carries the VM's own certificate, which proteus and chromium rightly refuse
    const url = `http://${handoff.desktopClient.host}:${handoff.desktopClient.port}/`
    const login = await proteus.login(url, db, handoff.trytonAdmin.login, handoff.trytonAdmin.password.reveal())
    expect(login.server).toMatch(/^7\.0\./)
    expect(login.user.login).toBe('admin')
    expect(login.modules.account_fr).toBe('activated')
    expect(login.accountTemplates).toBeGreaterThan(100)
    // and with the Tryton 7.0 web client in chromium, at the same address (trytond serves sao too)
    if (!hasChromium()) throw new Error('this test needs Debian\'s chromium (apt-get install chromium)')
    const web = await saoLogin(url, db, handoff.trytonAdmin.login, handoff.trytonAdmin.password.reveal())
    expect(web.version).toMatch(/^7\.0\./)
    expect(web.menu).toEqual(expect.arrayContaining(['Tiers', 'Financier']))
  }, 40 * 60_000)

  it('pgi status reports it healthy on 2.x', async () => {
    const r = await pgi(['status', uai, '--json'], {allowFailure: true})
    const out = JSON.parse(r.stdout) as {result: unknown}
    expect(JSON.stringify(out.result)).toContain(images.version)
    expect(r.exitCode, r.stdout.slice(-2000)).toBe(0)
  }, 20 * 60_000)
})
