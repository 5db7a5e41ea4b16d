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
import {request as httpsRequest} from 'node:https'
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
  let origin: string
  let rpcUrl: string
  let cert: X509Certificate
  let proteus: Proteus
  const browsers = new ConsoleBrowsers({shots: out, profilePrefix: 'pgi-console-e2e-chromium-', timeouts: {actionMs: 5 * 60_000, navigationMs: 10 * 60_000}})
  const browser = (viewport?: {width: number; height: number}) => browsers.open(viewport)
  const shot = (page: Page, name: string, fullPage = true) => browsers.shot(page, name, fullPage)
  const started = Date.now()
  const marks: Record<string, number> = {}

  const pgi = (args: string[], timeoutMs?: number): Promise<PgiRun> => labPgi(lab!, args, timeoutMs)
  const ok = expectOk



  async function h1(page: Page): Promise<string> {
    return (await page.getByRole('heading', {level: 1}).innerText()).trim()
  }

  async function waitJob(page: Page): Promise<string> {
    await expect.poll(() => page.url(), {timeout: 60_000}).toMatch(/\/console\/taches\/\d+/)
    const state = page.locator('#job-state strong')
    await expect.poll(async () => (await state.textContent())?.trim(), {timeout: JOB_MS, intervals: [2000, 5000]}).toMatch(/Terminée|Échec/)
    const text = (await page.locator('main').innerText()).replace(/\s+/g, ' ')
    expect(text, text).toContain('Terminée')
    return text
  }

  /** A form POSTed outside the browser with `page`'s cookies, TLS verified against the VM's certificate. */
  async function post(page: Page, path: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<number> {
    const url = new URL(path, origin)
    const cookie = (await page.context().cookies(url.href)).map((c) => `${c.name}=${c.value}`).join('; ')
    const body = new URLSearchParams(form).toString()
    return new Promise((resolve, reject) => {
      const req = httpsRequest(url, {method: 'POST', ca: cert.toString(), checkServerIdentity: () => undefined, headers: {
        'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': Buffer.byteLength(body), Cookie: cookie, ...headers}}, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  async function invoices(db: string, login: string, password: string): Promise<string[]> {
    const o = await proteus.python(READ_INVOICES, {url: rpcUrl, database: db, login, password}, 30 * 60_000)
    return JSON.parse(o.trim().split('\n').slice(-1)[0]!) as string[]
  }

  beforeAll(async () => {
    rmSync(out, {recursive: true, force: true})
    mkdirSync(out, {recursive: true})
    proteus = await proteusFor('6.0')
    ;({base, labDir, uai, handoff, rpcUrl} = await deployedQemuLab({prefix: 'pgi-e2e-console-', io, started: (l) => (lab = l)}))
    marks.deployed = Date.now()
  }, 90 * 60_000)

  afterAll(async () => {
    await browsers.close({minutes: {deploy: marks.deployed ? (marks.deployed - started) / 60_000 : null, total: (Date.now() - started) / 60_000}})
    await stopQemuLab(lab)
  }, 10 * 60_000)

  const codes: Record<string, string> = {}
  const A = {email: 'marie.curie@lycee-test.fr', name: 'Marie Curie', password: 'Correct-horse-battery-A'}
  const B = {email: 'paul.langevin@lycee-test.fr', name: 'Paul Langevin', password: 'Correct-horse-battery-B'}
  let teacherA: Page
  let teacherB: Page
  let ami: Page
  let classUrl = ''
  let student: {db: string; login: string; password: string}
  const INVOICE = 'Facture de Léa (test de la console)'
  const step = (name: string, fn: () => Promise<void>) => it(name, fn, STEP_MS)

  step("the handoff names the console and the certificate's fingerprint; the VM serves that certificate", async () => {
    expect(handoff.console, 'the handoff has no console section').toBeDefined()
    consoleUrl = handoff.console!.url
    expect(consoleUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/console\/$/)
    expect(handoff.webClient.url).toMatch(/^https:\/\//)
    const u = new URL(consoleUrl)
    origin = u.origin
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
    expect(codes[A.email]).toMatch(/^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$/)

    ;({page: ami} = await browser())
    await ami.goto(`${consoleUrl}ami/connexion`)
    await fits(ami, 'AMI login page')
    await shot(ami, '01-ami-connexion')
    await ami.getByLabel('Identifiant de l\'administrateur SQL').fill(handoff.postgresql.login)
    await ami.getByLabel('Mot de passe').fill(handoff.postgresql.password.reveal())
    await ami.getByRole('button', {name: 'Se connecter'}).click()
    await expect.poll(() => h1(ami), {timeout: 120_000}).toBe('Comptes des enseignants')
    await ami.getByLabel('Nom et prénom').fill(B.name)
    await ami.getByLabel('Adresse électronique').fill(B.email)
    await ami.getByRole('button', {name: 'Créer le compte'}).click()
    codes[B.email] = (await ami.locator('.code').textContent())!.trim()
    expect(codes[B.email]).toMatch(/^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$/)
    await shot(ami, '02-ami-code')
    await ami.getByRole('link', {name: 'Retour aux comptes des enseignants'}).click()
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
    await teacherA.goto(`${consoleUrl}activer`)
    await fits(teacherA, 'activation page')
    await teacherA.keyboard.press('Tab')
    expect(await teacherA.evaluate(() => document.activeElement?.textContent)).toBe('Aller au contenu')
    await teacherA.keyboard.press('Enter')
    const order: string[] = []
    for (let i = 0; i < 5; i++) {
      await teacherA.keyboard.press('Tab')
      order.push(await teacherA.evaluate(() => document.activeElement?.id || document.activeElement?.textContent?.trim() || ''))
    }
    expect(order).toEqual(['email', 'code', 'password', 'confirm', 'Enregistrer mon mot de passe'])
    // every field has its label
    for (const label of ['Adresse électronique', 'Code d\'activation', 'Nouveau mot de passe', 'Le même mot de passe, à nouveau']) expect(await teacherA.getByLabel(label).count(), label).toBe(1)
    await shot(teacherA, '04-activer')
    await teacherA.getByLabel('Adresse électronique').focus()
    await teacherA.keyboard.type(A.email)
    await teacherA.keyboard.press('Tab')
    await teacherA.keyboard.type(codes[A.email]!)
    await teacherA.keyboard.press('Tab')
    await teacherA.keyboard.type(A.password)
    await teacherA.keyboard.press('Tab')
    await teacherA.keyboard.type(A.password)
    await teacherA.keyboard.press('Enter')
    await expect.poll(() => h1(teacherA), {timeout: 120_000}).toBe('Mes classes')
    await fits(teacherA, 'home')
    await shot(teacherA, '05-mes-classes')
  })

  step('teacher A creates a class of 3 from the BTS template (bad rows reported first) and prints the sheet', async () => {
    const p = teacherA
    await p.getByRole('link', {name: 'Créer une classe'}).first().click()
    await p.getByLabel('Nom de la classe').fill('BTS CG1')
    await p.getByLabel('Coller la liste').fill('Nom;Prénom;Classe\nDUPONT;Léa;BTS CG1\n;Hugo;BTS CG1\nNGUYEN;Lina;BTS CG1\n')
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await expect.poll(() => p.getByRole('alert').innerText(), {timeout: 60_000}).toContain('ligne 3 : nom manquant')
    await fits(p, 'class form')
    await shot(p, '06-classe-erreurs')
    await p.getByLabel('Coller la liste').fill('Nom;Prénom;Classe\nDUPONT;Léa;BTS CG1\nMARTIN;Hugo;BTS CG1\nNGUYEN;Lina;BTS CG1\n')
    await p.getByLabel('Une base par élève').check()
    const t0 = Date.now()
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await shot(p, '07-tache-en-cours')
    await waitJob(p)
    marks.class_s = (Date.now() - t0) / 1000
    await shot(p, '08-tache-terminee')
    await p.getByRole('link', {name: 'Voir la classe'}).click()
    classUrl = p.url()
    await expect.poll(() => p.locator('tbody tr').count(), {timeout: 60_000}).toBe(4)
    await fits(p, 'class page')
    await shot(p, '09-classe')
    await p.setViewportSize({width: 768, height: 1024})
    await p.reload()
    await fits(p, 'class page on a 768-px tablet')
    await shot(p, '09-classe-tablette')
    await p.setViewportSize({width: 1280, height: 800})
    await p.getByRole('link', {name: 'Imprimer la fiche de la classe'}).click()
    await expect.poll(() => h1(p), {timeout: 60_000}).toBe('Classe BTS CG1 — accès à Tryton')
    const sheet = await p.locator('.sheet-table tbody tr').evaluateAll((rows) =>
      rows.map((r) => {
        const c = [...r.querySelectorAll('td')].map((td) => td.textContent!.trim())
        return {db: c[0]!, login: c[1]!, password: c[2]!}
      }),
    )
    expect(sheet.map((s) => s.login).sort()).toEqual(['hugo.martin', 'lea.dupont', 'lina.nguyen'])
    await shot(p, '10-fiche')
    student = sheet.find((s) => s.login === 'lea.dupont')!
  })

  step("a student logs into the Tryton web client with the sheet's credentials and records an invoice", async () => {
    const {page} = await browser()
    const s = student
    await page.goto(handoff.webClient.url)
    await page.locator('#login').waitFor()
    // sao shows a list of the databases once it has read it (a slow call under TCG), a field otherwise
    await page.locator('select#database:visible, input#database:visible').first().waitFor({timeout: 10 * 60_000})
    await page.waitForTimeout(1000)
    if (await page.locator('select#database').isVisible()) await page.locator('select#database').selectOption(s.db)
    else await page.locator('input#database').fill(s.db)
    await page.locator('input#login').fill(s.login)
    await page.locator('input#login').press('Enter')
    await page.locator('input[type=password]:visible').fill(s.password)
    await page.locator('input[type=password]:visible').press('Enter')
    // the first login into a new database loads trytond's pool: minutes under TCG
    await page.locator('#menu .column-char[title="Financier"]').waitFor({timeout: 30 * 60_000})
    await shot(page, '11-tryton-eleve', false)
    await page.locator('input[placeholder="Actions"]').fill('Factures client')
    await page.locator('.global-search-text', {hasText: 'Factures client'}).first().click()
    const tab = page.locator('#tabcontent > .tab-pane.active')
    await tab.locator('.toolbar button[id="new_"]').click()
    await expect.poll(() => page.evaluate(() => (document.activeElement as HTMLInputElement | null)?.name), {timeout: 10 * 60_000}).toBe('party')
    await page.keyboard.type('Client Durand')
    await page.keyboard.press('Tab')
    await page.locator('.modal-dialog').filter({hasText: 'Recherche Tiers'}).getByRole('button', {name: /^\s*nouveau\s*$/i}).click()
    const dlg = page.locator('.modal-dialog').filter({hasText: 'Adresses'})
    await dlg.locator('input[name="name"]').first().fill('Client Durand')
    await dlg.getByRole('button', {name: /^\s*sauver\s*$/i}).click()
    // the new party is set on the invoice (under TCG sao may still show its id, "[2]", until it has read its name)
    await expect.poll(() => tab.locator('input[name="party"]').inputValue(), {timeout: 5 * 60_000}).toMatch(/^(Client Durand|\[\d+\])$/)
    await tab.locator('input[name="description"]').fill(INVOICE)
    await tab.locator('.toolbar button[id="save"]').click()
    await expect.poll(() => invoices(s.db, s.login, s.password), {timeout: 20 * 60_000, intervals: [5000, 10_000]}).toEqual([INVOICE])
    await shot(page, '12-tryton-facture', false)
  })

  step("teacher A backs up the student's database, resets it (invoice gone), restores the backup (invoice back)", async () => {
    const p = teacherA
    const db = student.db
    await p.goto(classUrl)
    let t0 = Date.now()
    await p.getByRole('button', {name: `Sauvegarder ${db}`}).click()
    await waitJob(p)
    marks.backup_s = (Date.now() - t0) / 1000
    await p.goto(classUrl)
    await p.getByRole('link', {name: `Réinitialiser ${db}`}).click()
    await fits(p, 'reset page')
    await shot(p, '13-reinitialiser')
    await p.getByLabel(`Je veux réinitialiser la base ${db}`).focus()
    await p.keyboard.press('Space')
    await p.keyboard.press('Tab')
    expect(await p.evaluate(() => document.activeElement?.textContent?.trim())).toBe('Réinitialiser la base')
    t0 = Date.now()
    await p.keyboard.press('Enter')
    await waitJob(p)
    marks.reset_s = (Date.now() - t0) / 1000
    // gone, and the sheet's credentials still open it. The reset closed trytond's connections to
    // the database it replaced: trytond's first request on a closed connection fails ("server
    // closed the connection unexpectedly"), the next ones reconnect — polled
    await expect.poll(() => invoices(db, student.login, student.password), {timeout: 10 * 60_000, intervals: [5000]}).toEqual([])
    await p.goto(classUrl)
    await p.getByRole('link', {name: `Restaurer ${db}`}).click()
    await fits(p, 'restore page')
    const kinds = await p.locator('tbody tr td:nth-child(3)').allInnerTexts()
    expect(kinds.slice(0, 2)).toEqual(['avant réinitialisation ou restauration', 'sauvegarde demandée'])
    await p.locator('tbody tr').nth(1).locator('input[type=radio]').check()
    await p.getByLabel('à la place de la base actuelle', {exact: false}).check()
    await p.getByLabel('Pour remplacer, tapez le nom de la base', {exact: false}).fill(db)
    await shot(p, '14-restaurer')
    t0 = Date.now()
    await p.getByRole('button', {name: 'Restaurer', exact: true}).click()
    const text = await waitJob(p)
    marks.restore_s = (Date.now() - t0) / 1000
    expect(text).toContain('la version remplacée est gardée')
    await expect.poll(() => invoices(db, student.login, student.password), {timeout: 10 * 60_000, intervals: [5000]}).toEqual([INVOICE])
    await shot(p, '15-restauree')
  })

  step("teacher B cannot see or act on A's class: 403, direct URLs and forms included", async () => {
    ;({page: teacherB} = await browser({width: 768, height: 1024}))
    const p = teacherB
    await p.goto(`${consoleUrl}activer?email=${encodeURIComponent(B.email)}`)
    await p.getByLabel('Code d\'activation').fill(codes[B.email]!)
    await p.getByLabel('Nouveau mot de passe').fill(B.password)
    await p.getByLabel('Le même mot de passe, à nouveau').fill(B.password)
    await p.getByRole('button', {name: 'Enregistrer mon mot de passe'}).click()
    await expect.poll(() => h1(p), {timeout: 120_000}).toBe('Mes classes')
    expect(await p.locator('main').innerText()).not.toContain('BTS CG1')
    await fits(p, 'home on a 768-px tablet')
    await shot(p, '16-enseignant-b-tablette')
    const db = student.db
    const cid = /classes\/(\d+)/.exec(classUrl)![1]
    for (const path of [`classes/${cid}`, `classes/${cid}/fiche`, `classes/${cid}/archiver`, `bases/${db}/restaurer`, `bases/${db}/reinitialiser`, 'taches/1', 'taches/1.json', 'ami/']) {
      const r = await p.goto(`${consoleUrl}${path}`)
      expect(r!.status(), path).toBe(403)
    }
    await shot(p, '17-refus-403')
    await p.goto(consoleUrl)
    const token = await p.locator('input[name=csrf_token]').first().inputValue()
    for (const [path, form] of [
      [`bases/${db}/reinitialiser`, {confirm: 'oui'}],
      [`bases/${db}/sauvegarder`, {}],
      [`bases/${db}/restaurer`, {backup_id: 'x', mode: 'copy'}],
      [`classes/${cid}/sauvegarder`, {}],
      [`classes/${cid}/archiver`, {confirm: 'BTS CG1'}],
      ['classes', {label: 'Vol', model: db, mode: 'per-student', students: 'DUPONT;Jean\n'}],
    ] as const) {
      expect(await post(p, `/console/${path}`, {...form, csrf_token: token}, {Origin: origin}), path).toBe(403)
    }
    const audit = await pgi(['db', 'audit', uai, '--actor', B.email, '--json'])
    ok(audit)
    const bs = audit.json!.result.entries as {action: string; result: string}[]
    expect(bs.filter((e) => e.action.startsWith('tache.') && e.result !== 'refusé')).toEqual([])
    expect(bs.filter((e) => e.result === 'refusé').length).toBeGreaterThanOrEqual(14)
  })

  step("a form posted without its CSRF token, with another session's, or from another origin is refused", async () => {
    const p = teacherA
    await p.goto(classUrl)
    const db = student.db
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {})).toBe(403)
    const foreign = await teacherB.locator('input[name=csrf_token]').first().inputValue()
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {csrf_token: foreign})).toBe(403)
    const token = await p.locator('input[name=csrf_token]').first().inputValue()
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {csrf_token: token}, {Origin: 'https://evil.example'})).toBe(403)
    // the same request with its token, from this origin: accepted (a job)
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {csrf_token: token}, {Origin: origin})).toBe(302)
  })

  step('the audit log shows each action, on the AMI\'s page and in `pgi db audit`', async () => {
    await ami.goto(`${consoleUrl}ami/journal`)
    await fits(ami, 'audit page')
    await shot(ami, '18-journal', false)
    await ami.setViewportSize({width: 768, height: 1024})
    await ami.reload()
    await fits(ami, 'audit page on a 768-px tablet')
    await ami.setViewportSize({width: 1280, height: 800})
    const page = (await ami.locator('main').innerText()).replace(/\s+/g, ' ')
    const r = await pgi(['db', 'audit', uai, '--limit', '1000', '--json'])
    ok(r)
    const entries = r.json!.result.entries as {actor: string; action: string; result: string}[]
    const has = (actor: string, action: string, result: string) => entries.some((e) => e.actor === actor && e.action === action && e.result === result)
    const amiActor = `ami:${handoff.postgresql.login}`
    for (const [actor, action, result] of [
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
    ] as const) {
      expect(has(actor, action, result), `${actor} ${action} ${result} in ${JSON.stringify(entries.slice(0, 60))}`).toBe(true)
      expect(page).toContain(action)
    }
    const human = await pgi(['db', 'audit', uai, '--since', '2h'])
    ok(human)
    expect(human.stdout).toContain('tache.restore')
  })
})
