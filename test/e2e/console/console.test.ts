/**
 * The teachers' console end to end on a qemu lab VM (the pgi-tryton image, deployed by `pgi
 * deploy`), in a real browser: Debian's chromium driven by playwright-core (no browser download),
 * over the lab's forwarded HTTPS port, with the certificate the VM made at its first boot.
 *
 * The scenario of the console's issue ("Done when"):
 * - the handoff names the console and the certificate's fingerprint: the certificate the VM serves
 *   has that fingerprint, and chromium trusts only its key (what an AMI does after comparing);
 * - the AMI creates two teachers: A with `pgi db teacher add` (the one-time code asked for with
 *   --show-code), B on the console's AMI page (logged in with the handoff's SQL administrator);
 * - teacher A sets a password (keyboard only), creates a class of 3 from the BTS template (bad
 *   rows reported first, with their line), prints the sheet;
 * - a student logs into the Tryton web client with the sheet's credentials and records an invoice;
 * - A backs up, resets that student's database (invoice gone), restores it from the backup
 *   (invoice back) — the invoices read by proteus, a real Tryton client, as the student;
 * - teacher B gets 403 on A's class and A's URLs, forms included; a form posted without its CSRF
 *   token is refused;
 * - the audit log shows each action, on the AMI's page and in `pgi db audit`.
 * Keyboard-only use (labels, focus order) and layouts at 1280×800 and 768 px wide are checked.
 * Screenshots of the main pages and each page's server time (the console's Server-Timing header,
 * the application's own time) go to out/console-e2e/ (server-timing.json: recorded, not asserted).
 *
 * Opt-in (PGI_E2E_CONSOLE=1): under software emulation the deploy, the class and the first Tryton
 * login into a new database take tens of minutes. The image: PGI_E2E_IMAGES_DIR, or the e2e cache.
 * `PGI_E2E_CONSOLE=1 PGI_E2E_IMAGES_DIR=… npx vitest run test/e2e/console`.
 */
import {X509Certificate} from 'node:crypto'
import {mkdirSync, rmSync} from 'node:fs'
import {join} from 'node:path'
import {connect as tlsConnect} from 'node:tls'

import type {Page} from 'playwright-core'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {HandoffDocument} from '../../../src/fleet/handoff.js'
import {run} from '../../../src/exec.js'
import {StderrIo} from '../../../src/io.js'
import {packageRoot} from '../../../src/paths.js'
import type {PgiRun} from '../../helpers/cli.js'
import {deployedQemuLab, expectOk, labPgi, stopQemuLab, type DeployedQemuLab} from '../../helpers/qemu-lab.js'
import {PROTEUS_CONNECT, proteusFor, type Proteus} from '../../helpers/proteus.js'
import {ConsoleBrowsers, fits, spkiOf} from '../../helpers/console-browser.js'
import {CODE_FORMAT, ConsoleScenario, expectAudited, TEACHER_A as A, TEACHER_B as B, type SheetRow} from '../../helpers/console-scenario.js'
import {hasChromium} from '../../helpers/sao.js'

const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const out = join(packageRoot(), 'out', 'console-e2e')
/** Jobs and first logins under TCG: minutes each. */
const JOB_MS = 25 * 60_000
const STEP_MS = 60 * 60_000

const READ_INVOICES = PROTEUS_CONNECT + String.raw`
print(json.dumps(sorted(i.description or '' for i in Model.get('account.invoice').find([('type', '=', 'out')]))))
`

/** The certificate a TLS server presents (not verified: compared with the handoff's fingerprint next). */
function peerCertificate(host: string, port: number): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({host, port, servername: host === '127.0.0.1' ? undefined : host, rejectUnauthorized: false}, () => {
      const raw = s.getPeerCertificate(true).raw
      s.end()
      resolve(new X509Certificate(raw))
    })
    s.on('error', reject)
  })
}

describe.skipIf(process.env.PGI_E2E_CONSOLE !== '1' || !hasChromium())('the teachers\' console on a qemu lab VM, in chromium (PGI_E2E_CONSOLE=1)', () => {
  let lab: Pick<DeployedQemuLab, 'base' | 'labDir' | 'env'> | undefined
  let base: string
  let labDir: string
  let uai: string
  let handoff: HandoffDocument
  let consoleUrl: string
  let rpcUrl: string
  let cert: X509Certificate
  let proteus: Proteus
  const browsers = new ConsoleBrowsers({shots: out, profilePrefix: 'pgi-console-e2e-chromium-', timeouts: {actionMs: 5 * 60_000, navigationMs: 10 * 60_000}})
  const browser = (viewport?: {width: number; height: number}) => browsers.open(viewport)
  const shot = (page: Page, name: string, fullPage = true) => browsers.shot(page, name, fullPage)
  const scenario = new ConsoleScenario({
    browsers,
    consoleUrl: () => consoleUrl,
    webClientUrl: () => handoff.webClient.url,
    ca: () => cert.toString(),
    // the invoices as the student sees them, through proteus (a real Tryton client)
    invoices: async (db, login, password) => {
      const o = await proteus.python(READ_INVOICES, {url: rpcUrl, database: db, login, password}, 30 * 60_000)
      return JSON.parse(o.trim().split('\n').slice(-1)[0]!) as string[]
    },
    // jobs and first logins under TCG: minutes each
    timeouts: {uiMs: 120_000, jobMs: JOB_MS, jobIntervalMs: 5000, firstLoginMs: 30 * 60_000, invoicesMs: 20 * 60_000, invoicesIntervalMs: 10_000},
  })
  const started = Date.now()
  const marks: Record<string, number> = {}

  const pgi = (args: string[], timeoutMs?: number): Promise<PgiRun> => labPgi(lab!, args, timeoutMs)
  const ok = expectOk

  beforeAll(async () => {
    rmSync(out, {recursive: true, force: true})
    mkdirSync(out, {recursive: true})
    proteus = await proteusFor('6.0')
    ;({base, labDir, uai, handoff, rpcUrl} = await deployedQemuLab({prefix: 'pgi-e2e-console-', io, started: (l) => (lab = l)}))
    marks.deployed = Date.now()
  }, 90 * 60_000)

  afterAll(async () => {
    await browsers.close({minutes: {deploy: marks.deployed ? (marks.deployed - started) / 60_000 : null, total: (Date.now() - started) / 60_000}, seconds: Object.fromEntries(Object.entries(marks).filter(([k]) => k.endsWith('_s')))})
    await stopQemuLab(lab)
  }, 10 * 60_000)

  const codes: Record<string, string> = {}
  let teacherA: Page
  let teacherB: Page
  let ami: Page
  let classUrl = ''
  let student: SheetRow
  const step = (name: string, fn: () => Promise<void>) => it(name, fn, STEP_MS)

  step("the handoff names the console and the certificate's fingerprint; the VM serves that certificate", async () => {
    expect(handoff.console, 'the handoff has no console section').toBeDefined()
    consoleUrl = handoff.console!.url
    expect(consoleUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/console\/$/)
    expect(handoff.webClient.url).toMatch(/^https:\/\//)
    const u = new URL(consoleUrl)
    cert = await peerCertificate(u.hostname, Number(u.port))
    expect(cert.fingerprint256).toBe(handoff.console!.tlsSha256)
    browsers.spki = spkiOf(cert)
    const text = (await run('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), join(base, 'handoffs', `${uai}.handoff.age`)])).stdout
    expect(text).toContain(`Adresse               : ${consoleUrl}`)
    expect(text).toContain(handoff.console!.tlsSha256)
  })

  step('the AMI creates teacher A with `pgi db teacher add`, and teacher B on the console\'s AMI page', async () => {
    const r = await pgi(['db', 'teacher', 'add', uai, '--name', A.name, '--email', A.email, '--console-url', consoleUrl, '--show-code', '--json'], 10 * 60_000)
    ok(r)
    expect(r.json!.result).toMatchObject({teacher: {email: A.email, status: 'pending'}, setup_url: `${consoleUrl}activer?email=${encodeURIComponent(A.email)}`})
    codes[A.email] = r.json!.result.setup_code
    expect(codes[A.email]).toMatch(CODE_FORMAT)

    ;({page: ami} = await browser())
    await ami.goto(scenario.url('ami/connexion'))
    await fits(ami, 'AMI login page')
    await shot(ami, '01-ami-connexion')
    await ami.getByLabel('Identifiant de l\'administrateur SQL').fill(handoff.postgresql.login)
    await ami.getByLabel('Mot de passe').fill(handoff.postgresql.password.reveal())
    await ami.getByRole('button', {name: 'Se connecter'}).click()
    await scenario.expectH1(ami, 'Comptes des enseignants')
    codes[B.email] = await scenario.amiCreatesTeacher(ami, B, '02-ami-code')
    await expect.poll(() => ami.locator('tbody tr').count(), {timeout: 60_000}).toBe(2)
    await fits(ami, 'AMI page')
    await shot(ami, '03-ami-enseignants')
    const listed = await pgi(['db', 'teacher', 'list', uai, '--json'])
    ok(listed)
    expect(listed.json!.result.teachers.map((t: {email: string; created_by: string}) => [t.email, t.created_by])).toEqual([
      [A.email, 'cli:root'],
      [B.email, `ami:${handoff.postgresql.login}`],
    ])
  })

  step('teacher A sets a password with the one-time code, keyboard only (labels, focus order)', async () => {
    ;({page: teacherA} = await browser())
    await scenario.activateWithKeyboard(teacherA, A, codes[A.email]!, '04-activer')
    await fits(teacherA, 'home')
    await shot(teacherA, '05-mes-classes')
  })

  step('teacher A creates a class of 3 from the BTS template (bad rows reported first) and prints the sheet', async () => {
    const made = await scenario.createClassOf3(teacherA, () => shot(teacherA, '07-tache-en-cours'))
    marks.class_s = made.seconds
    classUrl = made.classUrl
    student = made.sheet.find((s) => s.login === 'lea.dupont')!
  })

  step("a student logs into the Tryton web client with the sheet's credentials and records an invoice", async () => {
    const {page} = await browser()
    await scenario.studentRecordsInvoice(page, student)
  })

  step("teacher A backs up the student's database, resets it (invoice gone), restores the backup (invoice back)", async () => {
    Object.assign(marks, await scenario.backupResetRestore(teacherA, classUrl, student))
  })

  step("teacher B cannot see or act on A's class: 403, direct URLs and forms included", async () => {
    ;({page: teacherB} = await browser({width: 768, height: 1024}))
    await scenario.teacherBIsRefused(teacherB, codes[B.email]!, classUrl, student.db)
    const audit = await pgi(['db', 'audit', uai, '--actor', B.email, '--json'])
    ok(audit)
    const bs = audit.json!.result.entries as {action: string; result: string}[]
    expect(bs.filter((e) => e.action.startsWith('tache.') && e.result !== 'refusé')).toEqual([])
    expect(bs.filter((e) => e.result === 'refusé').length).toBeGreaterThanOrEqual(14)
  })

  step("a form posted without its CSRF token, with another session's, or from another origin is refused", async () => {
    await scenario.csrfIsEnforced(teacherA, teacherB, classUrl, student.db)
  })

  step('the audit log shows each action, on the AMI\'s page and in `pgi db audit`', async () => {
    const page = await scenario.auditPageText(ami)
    const r = await pgi(['db', 'audit', uai, '--limit', '1000', '--json'])
    ok(r)
    const amiActor = `ami:${handoff.postgresql.login}`
    expectAudited(r.json!.result.entries as {actor: string; action: string; result: string}[], page, [
      ['cli:root', 'enseignant.creer', 'ok'],
      [amiActor, 'ami.connexion', 'ok'],
      [amiActor, 'enseignant.creer', 'ok'],
      [A.email, 'compte.activer', 'ok'],
      [A.email, 'tache.class', 'ok'],
      [A.email, 'classe.fiche', 'ok'],
      [A.email, 'tache.backup', 'ok'],
      [A.email, 'tache.reset', 'ok'],
      [A.email, 'tache.restore', 'ok'],
      [A.email, 'csrf', 'refusé'],
      [B.email, 'compte.activer', 'ok'],
      [B.email, 'classe.voir', 'refusé'],
      [B.email, 'base.reinitialiser', 'refusé'],
      [B.email, 'classe.creer', 'refusé'],
    ])
    const human = await pgi(['db', 'audit', uai, '--since', '2h'])
    ok(human)
    expect(human.stdout).toContain('tache.restore')
  })
})
