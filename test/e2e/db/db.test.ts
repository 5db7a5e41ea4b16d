/**
 * `pgi db` end to end on a qemu lab (one VM, the pgi-tryton image, booted once), as an AMI or a
 * technician runs it through bin/run.js, with Tryton itself as the judge (proteus, a real Tryton
 * client, over the lab's forwarded JSON-RPC port):
 *
 * - a model database (`pgi db create`) holds a customer invoice posted with proteus;
 * - `pgi db class` makes 5 per-student databases from it; the passwords are only in the file
 *   encrypted to the AMI (decrypted here with the lab's AMI key, as the AMI does with `age -d`),
 *   never on stdout; each student logs in with them and sees the model's invoice;
 * - `pgi db backup`, `pgi db drop` of one student, `pgi db restore --as` brings it back with the
 *   same invoice (number, total, state);
 * - `pgi db export` then `pgi db import --as` gives the same invoice in the new database;
 * - bad input on the real server: a CSV with bad lines (each reported, nothing made), a dump that
 *   is not one (refused before anything is sent).
 *
 * The image: PGI_E2E_IMAGES_DIR, or the e2e cache (test/helpers/e2e-image.ts).
 *
 * Opt-in (PGI_E2E_DB=1): under software emulation each first Tryton login into a new database
 * loads its pool (minutes per database), so the six logins alone pass the CI's time budget; the
 * same commands run on every CI run against the simulated lab (test/unit/db/cli.test.ts).
 * `PGI_E2E_DB=1 bash scripts/test.sh test/e2e/db`.
 */
import {readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {HandoffDocument} from '../../../src/fleet/handoff.js'
import {run} from '../../../src/exec.js'
import {openInventoryStore} from '../../../src/fleet/open.js'
import {Hypervisors} from '../../../src/hypervisors.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import {findEstablishment} from '../../../src/inventory/select.js'
import {StderrIo} from '../../../src/io.js'
import type {PgiRun} from '../../helpers/cli.js'
import {deployedQemuLab, expectOk, labPgi, stopQemuLab, type DeployedQemuLab} from '../../helpers/qemu-lab.js'
import {POST_INVOICE, PROTEUS_CONNECT, proteusFor, type PostedInvoice, type Proteus} from '../../helpers/proteus.js'

const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const today = new Date().toISOString().slice(0, 10)
/**
 * Each first login into a new database makes trytond load its pool: 5-6 minutes under TCG on a
 * busy 2-core machine, and the first test logs into six databases.
 */
const LONG = 90 * 60_000

// proteus: what a student's session reads (the model's invoices), credentials on stdin
const READ_INVOICES = PROTEUS_CONNECT + String.raw`
me = Model.get('res.user').find([('login', '=', d['login'])])[0]
Invoice = Model.get('account.invoice')
print(json.dumps({'login': me.login, 'invoices': sorted([[i.number, i.state, str(i.total_amount)] for i in Invoice.find([('type', '=', 'out')])])}))
`

describe.skipIf(process.env.PGI_E2E_DB !== '1')('pgi db on a qemu lab (PGI_E2E_DB=1)', () => {
  let lab: Pick<DeployedQemuLab, 'base' | 'labDir' | 'env'> | undefined
  let base: string
  let labDir: string
  let uai: string
  let handoff: HandoffDocument
  let rpcUrl: string
  let proteus: Proteus
  let invoice: [string, string, string]
  let students: {database: string; login: string; password: string}[] = []

  const pgi = (args: string[], timeoutMs?: number): Promise<PgiRun> => labPgi(lab!, args, timeoutMs)
  const ok = expectOk
  async function invoicesIn(database: string, login: string, password: string): Promise<{login: string; invoices: string[][]}> {
    const out = await proteus.python(READ_INVOICES, {url: rpcUrl, database, login, password}, 20 * 60_000)
    return JSON.parse(out.trim().split('\n').slice(-1)[0]!) as {login: string; invoices: string[][]}
  }

  beforeAll(async () => {
    proteus = await proteusFor('6.0')
    ;({base, labDir, uai, handoff, rpcUrl} = await deployedQemuLab({prefix: 'pgi-e2e-db-', io, started: (l) => (lab = l)}))
  }, 90 * 60_000)

  afterAll(() => stopQemuLab(lab), 10 * 60_000)

  it('a model with a posted invoice; a class of 5 per-student databases from it, each student logs in and sees it', async () => {
    ok(await pgi(['db', 'create', uai, 'modele_cg1', '--company', 'Entreprise modèle BTS', '--json']))
    const posted = await proteus.python(POST_INVOICE, {url: rpcUrl, database: 'modele_cg1', login: handoff.trytonAdmin.login, password: handoff.trytonAdmin.password.reveal(), date: today, party: 'Client modèle', product: 'Article'}, 20 * 60_000)
    const p = JSON.parse(posted.trim().split('\n').slice(-1)[0]!) as PostedInvoice
    invoice = [p.number, p.state, p.total]
    expect(invoice[1]).toBe('posted')
    expect(invoice[2]).toBe('360.00')

    // a list with a bad line: refused with the line, nothing made
    const bad = join(base, 'bad.csv')
    await writeFile(bad, 'Nom;Prénom;Classe\nDUPONT;Jean;BTS CG1\n;Léa;BTS CG1\n')
    const refused = await pgi(['db', 'class', uai, '--model', 'modele_cg1', '--students', bad, '--json'])
    expect(refused.exitCode, refused.stderr).toBe(3)
    expect(refused.json!.error!.message).toMatch(/line 3: nom manquant/)

    const csv = join(base, 'bts-cg1.csv')
    await writeFile(csv, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('Nom;Prénom;Classe\nDUPONT;Jean;BTS CG1\nMARTIN;Léa;BTS CG1\nN\'DIAYE;Aïssatou;BTS CG1\nDUPONT;Jean;BTS CG1\nLEROY;Émile;BTS CG1\n')]))
    const r = await pgi(['db', 'class', uai, '--model', 'modele_cg1', '--students', csv, '--out', join(base, 'classes'), '--json'])
    ok(r)
    const res = r.json!.result
    expect(res.databases).toHaveLength(5)
    expect(res.databases.map((x: {name: string}) => x.name)).toEqual(expect.arrayContaining(['bts_cg1_jean_dupont', 'bts_cg1_jean_dupont2', 'bts_cg1_lea_martin']))
    expect(r.stdout + r.stderr).not.toMatch(/password"\s*:\s*"[^"]+"/)
    // the passwords: only in the file, for the AMI
    const text = (await run('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), res.passwords_file])).stdout
    const lines = text.split('\n')
    const head = lines.findIndex((l) => l.startsWith('base;identifiant;mot de passe'))
    students = lines.slice(head + 1).filter(Boolean).map((l) => {
      const [database, login, password] = l.split(';')
      return {database: database!, login: login!, password: password!}
    })
    expect(students).toHaveLength(5)
    for (const s of students) expect(r.stdout).not.toContain(s.password)
    for (const s of students) {
      const seen = await invoicesIn(s.database, s.login, s.password)
      expect(seen.login).toBe(s.login)
      expect(seen.invoices).toEqual([invoice])
    }
    const listed = await pgi(['db', 'list', uai, '--json'])
    ok(listed)
    const dbs = listed.json!.result.establishments[0].databases as {name: string; class: string | null; kind: string}[]
    expect(dbs.filter((x) => x.kind === 'class-student').map((x) => x.class)).toEqual(Array(5).fill('BTS CG1'))
  }, LONG)

  it('backup, drop of one student, restore --as brings it back with the same invoice', async () => {
    const s = students.find((x) => x.database === 'bts_cg1_lea_martin')!
    const b = await pgi(['db', 'backup', uai, s.database, '--json'])
    ok(b)
    expect(b.json!.result.backups[0]).toMatchObject({database: s.database, kind: 'manual', verified: {ok: true}})
    // without --yes and without a terminal: refused, nothing dropped
    const noYes = await pgi(['db', 'drop', uai, s.database, '--json'])
    expect(noYes.exitCode).toBe(2)
    ok(await pgi(['db', 'drop', uai, s.database, '--yes', '--json']))
    const after = await pgi(['db', 'list', uai, '--json'])
    expect(after.json!.result.establishments[0].databases.map((x: {name: string}) => x.name)).not.toContain(s.database)
    const backups = await pgi(['db', 'backups', uai, s.database, '--json'])
    ok(backups)
    expect(backups.json!.result.backups.map((x: {kind: string}) => x.kind)).toEqual(expect.arrayContaining(['final', 'manual']))
    const manual = backups.json!.result.backups.find((x: {kind: string}) => x.kind === 'manual')
    const restored = await pgi(['db', 'restore', uai, s.database, '--from', manual.id, '--as', 'lea_martin_retour', '--json'])
    ok(restored)
    expect(restored.json!.result).toMatchObject({database: 'lea_martin_retour', replaced: false})
    const seen = await invoicesIn('lea_martin_retour', s.login, s.password)
    expect(seen.invoices).toEqual([invoice])
  }, LONG)

  it('export, then import under a new name, gives the same invoice; a file that is not a dump is refused', async () => {
    const out = join(base, 'modele.dump')
    const e = await pgi(['db', 'export', uai, 'modele_cg1', '--out', out, '--json'])
    ok(e)
    const manifest = JSON.parse(await readFile(`${out}.json`, 'utf8')) as {tryton_series: string; sha256: string}
    expect(manifest.tryton_series).toBe('6.0')
    expect(e.json!.result.sha256).toBe(manifest.sha256)
    const i = await pgi(['db', 'import', uai, out, '--as', 'modele_importe', '--json'])
    ok(i)
    expect(i.json!.result).toMatchObject({database: 'modele_importe', tryton_series: '6.0'})
    const seen = await invoicesIn('modele_importe', handoff.trytonAdmin.login, handoff.trytonAdmin.password.reveal())
    expect(seen.invoices).toEqual([invoice])

    const notDump = join(base, 'notes.dump')
    await writeFile(notDump, 'SELECT 1;\n')
    const refused = await pgi(['db', 'import', uai, notDump, '--as', 'pas_une_base', '--json'])
    expect(refused.exitCode).toBe(3)
    expect(refused.json!.error!.message).toMatch(/not a PostgreSQL custom-format dump/)
    const names = (await pgi(['db', 'list', uai, '--json'])).json!.result.establishments[0].databases.map((x: {name: string}) => x.name)
    expect(names).not.toContain('pas_une_base')
  }, LONG)

  it('a class the VM stops half-way (pgi-db gets SIGTERM, as at a shutdown): PGI_DB_INTERRUPTED, exit 1, none of its databases left', async () => {
    const inv = await loadValidInventory(lab!.env.PGI_INVENTORY!)
    const e = findEstablishment(inv, uai)
    const api = await new Hypervisors(inv, {store: await openInventoryStore(inv, lab!.env.PGI_SECRETS_DIR!, lab!.env), io, env: lab!.env}).get(e.hypervisor)
    const psql = async (sql: string): Promise<string> =>
      (await api.agentExec(e.node, e.vmid, ['psql', '-h', '/var/run/postgresql', '-U', 'postgres', '-tAc', sql], {timeoutMs: 5 * 60_000})).stdout.trim()
    const csv = join(base, 'coupee.csv')
    await writeFile(csv, ['Nom;Prénom;Classe', ...Array.from({length: 30}, (_, i) => `COUPE${String.fromCharCode(65 + (i % 26))};Eleve${i};BTS COUPE`)].join('\n'))
    const running = pgi(['db', 'class', uai, '--model', 'modele_cg1', '--students', csv, '--out', join(base, 'classes'), '--json'])
    // once the class's first database exists, pgi-db in the VM is stopped as a shutdown stops it
    const ofClass = "SELECT count(*) FROM pg_database WHERE datname LIKE 'bts\\_coupe\\_%'"
    const deadline = Date.now() + 20 * 60_000
    while (Number(await psql(ofClass)) === 0) {
      expect(Date.now() < deadline, 'no database of the class after 20 min').toBe(true)
      await new Promise((r) => setTimeout(r, 500))
    }
    await api.agentExec(e.node, e.vmid, ['pkill', '-TERM', '-f', 'pgi-db class'], {timeoutMs: 60_000})
    const r = await running
    expect(r.exitCode, `${r.stderr.slice(-2000)}\n${r.stdout.slice(-1000)}`).toBe(1)
    expect(r.json!.error!.code).toBe('PGI_DB_INTERRUPTED')
    expect(r.json!.error!.message).toMatch(/^pgi-db class was stopped in VM \d+: interrupted/)
    // the engine undid the class: none of its databases, no temporary one
    expect(await psql(ofClass)).toBe('0')
    expect(await psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgi\\_tmp\\_%'")).toBe('0')
    const names = (await pgi(['db', 'list', uai, '--json'])).json!.result.establishments[0].databases.map((x: {name: string}) => x.name)
    expect(names.filter((n: string) => n.startsWith('bts_coupe_'))).toEqual([])
  }, LONG)
})
