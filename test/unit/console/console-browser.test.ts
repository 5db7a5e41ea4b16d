/**
 * The teachers' console in a real browser (Debian's chromium driven by playwright-core), natively:
 * the image's console, database engine, pgi-tls and nginx site run on this machine against a
 * throwaway PostgreSQL cluster and a real trytond serving the Tryton web client (consolelab.py).
 *
 * The scenario of the console's issue: the AMI creates two teachers; teacher A sets a password,
 * creates a class of 3 from the BTS template and prints the sheet; a student logs into the Tryton
 * web client with the sheet's credentials and records an invoice; teacher A backs up, resets that
 * student's database (invoice gone), restores it (invoice back); teacher B cannot see or act on A's
 * class (403, direct URLs too); a form posted without its CSRF token is refused; the audit log shows
 * each action. Plus: HTTPS with the VM's own certificate (chromium trusts only its key), port 80
 * redirects, keyboard-only login and confirmation, pages that fit 1280×800 and a 768-px tablet.
 * Screenshots of the main pages go to out/console-screenshots/ (the latest run; docs/console.md
 * shows some of them), with each page's server time as the console reports it (Server-Timing:
 * recorded in server-timing.json, not asserted: speed is measured by bench/, not by tests).
 *
 * Skipped, with the reason, on a machine without what it needs (root, PostgreSQL, trytond and its
 * modules, tryton-sao, nginx, python3-flask/waitress/argon2, chromium: scripts/install-deps.sh --test).
 */
import {spawn, spawnSync, type ChildProcessWithoutNullStreams} from 'node:child_process'
import {request as httpsRequest} from 'node:https'
import {X509Certificate} from 'node:crypto'
import {existsSync, mkdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {createInterface} from 'node:readline'
import {fileURLToPath} from 'node:url'

import type {Page} from 'playwright-core'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ConsoleBrowsers, fits, spkiOf} from '../../helpers/console-browser.js'

const here = dirname(fileURLToPath(import.meta.url))
const repo = join(here, '..', '..', '..')
const python = '/usr/bin/python3'
const CHROMIUM = '/usr/bin/chromium'
const shots = join(repo, 'out', 'console-screenshots')

function missing(): string | null {
  if (!existsSync(CHROMIUM)) return 'needs Debian\'s chromium'
  const r = spawnSync(python, [join(here, 'consolelab.py'), 'check'], {encoding: 'utf8'})
  if (r.error) return `${python} not found`
  if (r.status !== 0) return `cannot check the prerequisites: ${r.stderr.trim().slice(-300)}`
  return r.stdout.trim() || null
}

interface LabInfo {
  https: string
  http: string
  tls_cert: string
  tls_json: string
  ami_login: string
  ami_password: string
  dir: string
}

/** The lab process: started once, asked questions over stdin (one JSON line each). */
class Lab {
  info!: LabInfo
  #proc!: ChildProcessWithoutNullStreams
  #lines: string[] = []
  #waiters: ((l: string) => void)[] = []
  #stderr = ''

  async start(): Promise<void> {
    this.#proc = spawn(python, [join(here, 'consolelab.py'), 'serve'], {env: {...process.env, PYTHONUNBUFFERED: '1'}})
    this.#proc.stderr.on('data', (d: Buffer) => (this.#stderr = (this.#stderr + d.toString()).slice(-20000)))
    createInterface({input: this.#proc.stdout}).on('line', (l) => {
      const w = this.#waiters.shift()
      if (w) w(l)
      else this.#lines.push(l)
    })
    const exited = new Promise<never>((_, reject) =>
      this.#proc.once('exit', (c) => reject(new Error(`the console lab exited (${c}):\n${this.#stderr.slice(-4000)}`))),
    )
    this.info = JSON.parse(await Promise.race([this.#line(), exited])) as LabInfo
  }

  #line(): Promise<string> {
    const l = this.#lines.shift()
    if (l !== undefined) return Promise.resolve(l)
    return new Promise((resolve) => this.#waiters.push(resolve))
  }

  async ask<T = unknown>(req: object): Promise<T> {
    this.#proc.stdin.write(`${JSON.stringify(req)}\n`)
    const r = JSON.parse(await this.#line()) as {error?: string}
    if (r.error) throw new Error(`lab: ${r.error}`)
    return r as T
  }

  async sql(db: string, sql: string): Promise<string[][]> {
    return (await this.ask<{rows: string[][]}>({psql: sql, db})).rows
  }

  async stop(): Promise<void> {
    if (!this.#proc || this.#proc.exitCode !== null) return
    const done = new Promise((r) => this.#proc.once('exit', r))
    this.#proc.stdin.end()
    await Promise.race([done, new Promise((r) => setTimeout(r, 60_000))])
  }
}

const why = missing()

describe.skipIf(why !== null)(`teachers' console in chromium, native${why ? ` (skipped: ${why})` : ''}`, () => {
  const lab = new Lab()
  const browsers = new ConsoleBrowsers({shots, profilePrefix: 'pgi-console-chromium-'})
  const browser = (viewport?: {width: number; height: number}) => browsers.open(viewport)
  const shot = (page: Page, name: string, fullPage = true) => browsers.shot(page, name, fullPage)

  async function waitJob(page: Page): Promise<string> {
    await expect.poll(() => page.url(), {timeout: 10_000}).toMatch(/\/console\/taches\/\d+/)
    const state = page.locator('#job-state strong')
    await expect.poll(async () => (await state.textContent())?.trim(), {timeout: 240_000, intervals: [500, 1000]}).toMatch(/Terminée|Échec/)
    const text = (await page.locator('main').innerText()).replace(/\s+/g, ' ')
    expect(text, text).toContain('Terminée')
    return text
  }

  /** A form POSTed outside the browser, with `page`'s cookies, over TLS verified against the lab's
   * certificate: what a forged or replayed request looks like to the console. */
  async function post(page: Page, path: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<number> {
    const url = new URL(path, lab.info.https)
    const cookie = (await page.context().cookies(url.href)).map((c) => `${c.name}=${c.value}`).join('; ')
    const body = new URLSearchParams(form).toString()
    return new Promise((resolve, reject) => {
      const req = httpsRequest(url, {method: 'POST', ca: readFileSync(lab.info.tls_cert), headers: {
        'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': Buffer.byteLength(body), Cookie: cookie, ...headers}}, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  async function invoices(db: string): Promise<string[]> {
    return (await lab.sql(db, "SELECT description FROM account_invoice WHERE type = 'out' ORDER BY id")).map((r) => r[0])
  }

  beforeAll(async () => {
    rmSync(shots, {recursive: true, force: true})
    mkdirSync(shots, {recursive: true})
    await lab.start()
    const cert = new X509Certificate(readFileSync(lab.info.tls_cert))
    browsers.spki = spkiOf(cert)
  }, 20 * 60_000)

  afterAll(async () => {
    await browsers.close()
    await lab.stop()
  }, 120_000)

  // the state the scenario builds, step by step
  const codes: Record<string, string> = {}
  const A = {email: 'marie.curie@lycee-test.fr', name: 'Marie Curie', password: 'Correct-horse-battery-A'}
  const B = {email: 'paul.langevin@lycee-test.fr', name: 'Paul Langevin', password: 'Correct-horse-battery-B'}
  let teacherA: Page
  let teacherB: Page
  let ami: Page
  let sheet: {db: string; login: string; password: string}[] = []
  let classUrl = ''
  const student = () => sheet[0]!
  const step = (name: string, fn: () => Promise<void>) => it(name, fn, 10 * 60_000)

  step('serves HTTPS with the certificate pgi-tls made (its fingerprint recorded), and port 80 redirects browsers', async () => {
    const tls = JSON.parse(readFileSync(lab.info.tls_json, 'utf8')) as {sha256: string; saved: boolean}
    const cert = new X509Certificate(readFileSync(lab.info.tls_cert))
    expect(tls.sha256).toBe(cert.fingerprint256)
    expect(tls.saved).toBe(true)
    const {page} = await browser()
    const r = await page.request.get(`${lab.info.http}/console/`, {maxRedirects: 0})
    expect(r.status()).toBe(301)
    expect(r.headers()['location']).toMatch(/^https:\/\/127\.0\.0\.1\/console\/$/)
    const sao = await page.request.get(`${lab.info.http}/`, {maxRedirects: 0})
    expect(sao.status()).toBe(301)
    // Tryton's JSON-RPC stays answered on port 80 for the host-side tools
    const rpc = await page.request.post(`${lab.info.http}/`, {data: {id: 1, method: 'common.server.version', params: []}})
    expect(rpc.status()).toBe(200)
    expect(((await rpc.json()) as {result: string}).result).toMatch(/^\d+\.\d+/)
  })

  step('AMI: logs in with the SQL administrator codes of the handoff and creates two teachers', async () => {
    ;({page: ami} = await browser())
    await ami.goto(`${lab.info.https}/console/ami/connexion`)
    await shot(ami, '01-ami-connexion')
    await ami.getByLabel('Identifiant de l\'administrateur SQL').fill(lab.info.ami_login)
    await ami.getByLabel('Mot de passe').fill('not-the-password')
    await ami.getByRole('button', {name: 'Se connecter'}).click()
    await expect.poll(() => ami.getByRole('alert').innerText(), {timeout: 30_000}).toContain('incorrect')
    await ami.getByLabel('Mot de passe').fill(lab.info.ami_password)
    await ami.getByRole('button', {name: 'Se connecter'}).click()
    await expect.poll(async () => (await ami.getByRole('heading', {level: 1}).innerText()).trim(), {timeout: 30_000}).toBe('Comptes des enseignants')
    for (const t of [A, B]) {
      await ami.getByLabel('Nom et prénom').fill(t.name)
      await ami.getByLabel('Adresse électronique').fill(t.email)
      await ami.getByRole('button', {name: 'Créer le compte'}).click()
      const code = (await ami.locator('.code').textContent())!.trim()
      expect(code).toMatch(/^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$/)
      codes[t.email] = code
      if (t === A) await shot(ami, '02-ami-code')
      await ami.getByRole('link', {name: 'Retour aux comptes des enseignants'}).click()
    }
    await expect.poll(() => ami.locator('tbody tr').count(), {timeout: 30_000}).toBe(2)
    await fits(ami, 'AMI page')
    await shot(ami, '03-ami-enseignants')
  })

  step('teacher A sets a password with the one-time code (keyboard only), then logs in again with it', async () => {
    ;({page: teacherA} = await browser())
    await teacherA.goto(`${lab.info.https}/console/activer`)
    await fits(teacherA, 'activation page')
    // keyboard only: the skip link first (Enter jumps to the content), then the fields in order
    await teacherA.keyboard.press('Tab')
    expect(await teacherA.evaluate(() => document.activeElement?.textContent)).toBe('Aller au contenu')
    await teacherA.keyboard.press('Enter')
    const order: string[] = []
    for (let i = 0; i < 5; i++) {
      await teacherA.keyboard.press('Tab')
      order.push(await teacherA.evaluate(() => document.activeElement?.id || document.activeElement?.textContent?.trim() || ''))
    }
    expect(order).toEqual(['email', 'code', 'password', 'confirm', 'Enregistrer mon mot de passe'])
    await teacherA.getByLabel('Adresse électronique').focus()
    await teacherA.keyboard.type(A.email)
    await teacherA.keyboard.press('Tab')
    await teacherA.keyboard.type(codes[A.email]!.toLowerCase().replace(/-/g, ''))
    await teacherA.keyboard.press('Tab')
    await teacherA.keyboard.type(A.password)
    await teacherA.keyboard.press('Tab')
    await teacherA.keyboard.type(A.password)
    await teacherA.keyboard.press('Enter')
    await expect.poll(async () => (await teacherA.getByRole('heading', {level: 1}).innerText()).trim(), {timeout: 30_000}).toBe('Mes classes')
    // the code was spent
    const {page: again} = await browser()
    await again.goto(`${lab.info.https}/console/activer`)
    await again.getByLabel('Adresse électronique').fill(A.email)
    await again.getByLabel('Code d\'activation').fill(codes[A.email]!)
    await again.getByLabel('Nouveau mot de passe').fill('Another-password-1')
    await again.getByLabel('Le même mot de passe, à nouveau').fill('Another-password-1')
    await again.getByRole('button', {name: 'Enregistrer mon mot de passe'}).click()
    await expect.poll(() => again.getByRole('alert').innerText(), {timeout: 30_000}).toContain('code invalide')
    // logging in: keyboard only
    await again.goto(`${lab.info.https}/console/connexion`)
    await shot(again, '04-connexion')
    await again.keyboard.type(A.email) // the address field has the focus
    await again.keyboard.press('Tab')
    await again.keyboard.type(A.password)
    await again.keyboard.press('Enter')
    await expect.poll(async () => (await again.getByRole('heading', {level: 1}).innerText()).trim(), {timeout: 30_000}).toBe('Mes classes')
  })

  step('teacher A creates a class of 3 from the BTS template (bad rows first reported with their line) and prints the sheet', async () => {
    const p = teacherA
    await p.getByRole('link', {name: 'Créer une classe'}).first().click()
    await p.getByLabel('Nom de la classe').fill('BTS CG1')
    await p.getByLabel('Coller la liste').fill('Nom;Prénom;Classe\nDUPONT;Léa;BTS CG1\n;Hugo;BTS CG1\nNGUYEN;Lina;BTS CG1\n')
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await expect.poll(() => p.getByRole('alert').innerText(), {timeout: 30_000}).toContain('ligne 3 : nom manquant')
    await fits(p, 'class form')
    await shot(p, '05-classe-erreurs')
    await p.getByLabel('Coller la liste').fill('Nom;Prénom;Classe\nDUPONT;Léa;BTS CG1\nMARTIN;Hugo;BTS CG1\nNGUYEN;Lina;BTS CG1\n')
    await p.getByLabel('Une base par élève').check()
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await waitJob(p)
    await shot(p, '06-tache-terminee')
    await p.getByRole('link', {name: 'Voir la classe'}).click()
    classUrl = p.url()
    await expect.poll(() => p.locator('tbody tr').count(), {timeout: 30_000}).toBe(4) // the class's model and the three students' databases
    await fits(p, 'class page')
    await shot(p, '07-classe')
    await p.getByRole('link', {name: 'Imprimer la fiche de la classe'}).click()
    await expect.poll(async () => (await p.getByRole('heading', {level: 1}).innerText()).trim(), {timeout: 30_000}).toBe('Classe BTS CG1 — accès à Tryton')
    sheet = await p.locator('.sheet-table tbody tr').evaluateAll((rows) =>
      rows.map((r) => {
        const c = [...r.querySelectorAll('td')].map((td) => td.textContent!.trim())
        return {db: c[0]!, login: c[1]!, password: c[2]!}
      }),
    )
    expect(sheet).toHaveLength(3)
    expect(sheet.map((s) => s.login).sort()).toEqual(['hugo.martin', 'lea.dupont', 'lina.nguyen'])
    for (const s of sheet) expect(s.password).toMatch(/^[a-z2-9]{10}$/)
    await shot(p, '08-fiche')
    sheet.sort((a, b) => a.login.localeCompare(b.login))
  })

  step('a class sheet of 30 (shared mode) prints on one A4 page', async () => {
    const p = teacherA
    const names = Array.from({length: 30}, (_, i) => `NOM${String.fromCharCode(65 + (i % 26))}${i};Prénom${i};BTS CG2`).join('\n')
    await p.goto(`${lab.info.https}/console/classes/nouvelle`)
    await p.getByLabel('Nom de la classe').fill('BTS CG2')
    await p.getByLabel('Coller la liste').fill(`Nom;Prénom;Classe\n${names}\n`)
    await p.getByLabel('Une base partagée').check()
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await waitJob(p)
    await p.getByRole('link', {name: 'Imprimer la fiche de la classe'}).click()
    expect(await p.locator('.sheet-table tbody tr').count()).toBe(30)
    await p.emulateMedia({media: 'print'})
    const pdf = await p.pdf({format: 'A4', printBackground: false})
    await p.emulateMedia({media: 'screen'})
    writeFileSync(join(shots, '08-fiche-30.pdf'), pdf)
    const pages = pdf.toString('latin1').match(/\/Type\s*\/Page[^s]/g) ?? []
    expect(pages.length).toBe(1)
  })

  step('a student logs into the Tryton web client with the sheet\'s credentials and records an invoice', async () => {
    const {page} = await browser()
    const s = sheet.find((x) => x.login === 'lea.dupont')!
    sheet = [s]
    await page.goto(`${lab.info.https}/`)
    await page.locator('#login').waitFor()
    await page.waitForTimeout(500)
    if (await page.locator('select#database').isVisible()) await page.locator('select#database').selectOption(s.db)
    else await page.locator('input#database').fill(s.db)
    await page.locator('input#login').fill(s.login)
    await page.locator('input#login').press('Enter')
    await page.locator('input[type=password]:visible').fill(s.password)
    await page.locator('input[type=password]:visible').press('Enter')
    await page.locator('#menu .column-char[title="Financier"]').waitFor({timeout: 120_000})
    await shot(page, '09-tryton-eleve', false)
    await page.locator('input[placeholder="Actions"]').fill('Factures client')
    await page.locator('.global-search-text', {hasText: 'Factures client'}).first().click()
    const tab = page.locator('#tabcontent > .tab-pane.active')
    await tab.locator('.toolbar button[id="new_"]').click()
    // the new record's form is ready when sao has put the focus on its first field, the party
    await expect.poll(() => page.evaluate(() => (document.activeElement as HTMLInputElement | null)?.name), {timeout: 30_000}).toBe('party')
    // typed as a person types (sao reacts to key events), then Tab: no such party, sao offers to make it
    await page.keyboard.type('Client Durand')
    await page.keyboard.press('Tab')
    await page.locator('.modal-dialog').filter({hasText: 'Recherche Tiers'}).getByRole('button', {name: /^\s*nouveau\s*$/i}).click()
    // the new party's form (its addresses below): its name
    const dlg = page.locator('.modal-dialog').filter({hasText: 'Adresses'})
    await dlg.locator('input[name="name"]').first().fill('Client Durand')
    await dlg.getByRole('button', {name: /^\s*sauver\s*$/i}).click()
    // the new party is set on the invoice; on a loaded machine sao may still show its id ("[2]")
    // until it has read the party's name: either is the party just made (the saved invoice is checked below)
    await expect.poll(() => tab.locator('input[name="party"]').inputValue(), {timeout: 60_000}).toMatch(/^(Client Durand|\[\d+\])$/)
    await tab.locator('input[name="description"]').fill('Facture de Léa (test de la console)')
    await tab.locator('.toolbar button[id="save"]').click()
    await expect.poll(() => invoices(s.db), {timeout: 60_000}).toEqual(['Facture de Léa (test de la console)'])
    await shot(page, '10-tryton-facture', false)
  })

  step('teacher A backs up the student\'s database, resets it (invoice gone), restores the backup (invoice back)', async () => {
    const p = teacherA
    const db = student().db
    await p.goto(classUrl)
    await p.getByRole('button', {name: `Sauvegarder ${db}`}).click()
    await waitJob(p)
    await p.goto(classUrl)
    await p.getByRole('link', {name: `Réinitialiser ${db}`}).click()
    await fits(p, 'reset page')
    await shot(p, '11-reinitialiser')
    // keyboard only: the checkbox, then the button
    await p.getByLabel(`Je veux réinitialiser la base ${db}`).focus()
    await p.keyboard.press('Space')
    await p.keyboard.press('Tab')
    expect(await p.evaluate(() => document.activeElement?.textContent?.trim())).toBe('Réinitialiser la base')
    await p.keyboard.press('Enter')
    await waitJob(p)
    expect(await invoices(db)).toEqual([])
    // the sheet's credentials still work after the reset (the student's user kept with its password)
    const users = await lab.sql(db, "SELECT login FROM res_user WHERE login = 'lea.dupont' AND active")
    expect(users).toHaveLength(1)
    await p.goto(classUrl)
    await p.getByRole('link', {name: `Restaurer ${db}`}).click()
    await fits(p, 'restore page')
    // newest first: the dump kept by the reset, then the backup made above
    const kinds = await p.locator('tbody tr td:nth-child(3)').allInnerTexts()
    expect(kinds.slice(0, 2)).toEqual(['avant réinitialisation ou restauration', 'sauvegarde demandée'])
    await p.locator('tbody tr').nth(1).locator('input[type=radio]').check()
    await p.getByLabel('à la place de la base actuelle', {exact: false}).check()
    await p.getByLabel('Pour remplacer, tapez le nom de la base', {exact: false}).fill(db)
    await shot(p, '12-restaurer')
    await p.getByRole('button', {name: 'Restaurer', exact: true}).click()
    const text = await waitJob(p)
    expect(text).toContain('la version remplacée est gardée')
    expect(await invoices(db)).toEqual(['Facture de Léa (test de la console)'])
    await shot(p, '13-restauree')
  })

  step('teacher A downloads the student\'s dump (a pg_dump archive)', async () => {
    const p = teacherA
    // the class page on a 768-px tablet first
    await p.setViewportSize({width: 768, height: 1024})
    await p.goto(classUrl)
    await fits(p, 'class page on a 768-px tablet')
    await shot(p, '07-classe-tablette')
    await p.setViewportSize({width: 1280, height: 800})
    await p.goto(classUrl)
    await p.getByRole('button', {name: `Télécharger ${student().db}`}).click()
    await waitJob(p)
    const [download] = await Promise.all([p.waitForEvent('download'), p.getByRole('link', {name: /^Télécharger /}).click()])
    const path = await download.path()
    expect(readFileSync(path!).subarray(0, 5).toString()).toBe('PGDMP')
    expect(download.suggestedFilename()).toMatch(new RegExp(`^${student().db}-\\d{8}-\\d{4}\\.dump$`))
  })

  step('teacher B cannot see or act on A\'s class: 403, direct URLs and forms included', async () => {
    ;({page: teacherB} = await browser({width: 768, height: 1024}))
    const p = teacherB
    await p.goto(`${lab.info.https}/console/activer?email=${encodeURIComponent(B.email)}`)
    await p.getByLabel('Code d\'activation').fill(codes[B.email]!)
    await p.getByLabel('Nouveau mot de passe').fill(B.password)
    await p.getByLabel('Le même mot de passe, à nouveau').fill(B.password)
    await p.getByRole('button', {name: 'Enregistrer mon mot de passe'}).click()
    await expect.poll(async () => (await p.getByRole('heading', {level: 1}).innerText()).trim(), {timeout: 30_000}).toBe('Mes classes')
    expect(await p.locator('main').innerText()).not.toContain('BTS CG1')
    await fits(p, 'home on a 768-px tablet')
    await shot(p, '14-enseignant-b-tablette')
    const db = student().db
    const cid = /classes\/(\d+)/.exec(classUrl)![1]
    for (const path of [`/console/classes/${cid}`, `/console/classes/${cid}/fiche`, `/console/classes/${cid}/archiver`, `/console/bases/${db}/restaurer`,
      `/console/bases/${db}/reinitialiser`, '/console/taches/1', '/console/taches/1.json', '/console/taches/1/fichier', '/console/ami/']) {
      const r = await p.goto(`${lab.info.https}${path}`)
      expect(r!.status(), path).toBe(403)
    }
    await shot(p, '15-refus-403')
    // B's own valid CSRF token, on A's database and class: still 403, and nothing queued
    await p.goto(`${lab.info.https}/console/`)
    const token = await p.locator('input[name=csrf_token]').first().inputValue()
    for (const [path, form] of [
      [`/console/bases/${db}/reinitialiser`, {confirm: 'oui'}],
      [`/console/bases/${db}/sauvegarder`, {}],
      [`/console/bases/${db}/telecharger`, {}],
      [`/console/bases/${db}/restaurer`, {backup_id: 'x', mode: 'copy'}],
      [`/console/classes/${cid}/sauvegarder`, {}],
      [`/console/classes/${cid}/archiver`, {confirm: 'BTS CG1'}],
      // a class from A's database as its model
      ['/console/classes', {label: 'Vol', model: db, mode: 'per-student', students: 'DUPONT;Jean\n'}],
    ] as const) {
      expect(await post(p, path, {...form, csrf_token: token}, {Origin: lab.info.https}), path).toBe(403)
    }
    const jobs = await lab.ask<{out: {action: string; actor: string; result: string}[]}>({console: ['audit', '--actor', B.email]})
    expect(jobs.out.filter((e) => e.action.startsWith('tache.') && e.result !== 'refusé')).toEqual([])
  })

  step('a form posted without its CSRF token, or with another session\'s, is refused', async () => {
    const p = teacherA
    await p.goto(classUrl)
    const db = student().db
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {})).toBe(403)
    const foreign = await teacherB.locator('input[name=csrf_token]').first().inputValue()
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {csrf_token: foreign})).toBe(403)
    // from another site (Origin), even with the right token
    const token = await p.locator('input[name=csrf_token]').first().inputValue()
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {csrf_token: token}, {Origin: 'https://evil.example'})).toBe(403)
    // the same request with the token, from this origin: accepted (a job, then its page)
    expect(await post(p, `/console/bases/${db}/sauvegarder`, {csrf_token: token}, {Origin: lab.info.https})).toBe(302)
  })

  step('the audit log shows each action, in the AMI\'s page and in `pgi-console audit`', async () => {
    await ami.goto(`${lab.info.https}/console/ami/journal`)
    await fits(ami, 'audit page')
    await shot(ami, '16-journal', false)
    const page = (await ami.locator('main').innerText()).replace(/\s+/g, ' ')
    const cli = (await lab.ask<{status: number; out: {actor: string; action: string; result: string; target: string}[]}>({console: ['audit', '--limit', '1000']}))
    expect(cli.status).toBe(0)
    const has = (actor: string, action: string, result: string) => cli.out.some((e) => e.actor === actor && e.action === action && e.result === result)
    for (const [actor, action, result] of [
      [`ami:${lab.info.ami_login}`, 'ami.connexion', 'ok'],
      [`ami:${lab.info.ami_login}`, 'ami.connexion', 'échec'],
      [`ami:${lab.info.ami_login}`, 'enseignant.creer', 'ok'],
      [A.email, 'compte.activer', 'ok'],
      [A.email, 'connexion', 'ok'],
      [A.email, 'tache.class', 'ok'],
      [A.email, 'classe.fiche', 'ok'],
      [A.email, 'tache.backup', 'ok'],
      [A.email, 'tache.reset', 'ok'],
      [A.email, 'tache.restore', 'ok'],
      [A.email, 'tache.download', 'ok'],
      [A.email, 'csrf', 'refusé'],
      [B.email, 'classe.voir', 'refusé'],
      [B.email, 'base.reinitialiser', 'refusé'],
      [B.email, 'classe.creer', 'refusé'],
    ] as const) {
      expect(has(actor, action, result), `${actor} ${action} ${result} in ${JSON.stringify(cli.out.slice(0, 60))}`).toBe(true)
      expect(page).toContain(action)
    }
  })
})
