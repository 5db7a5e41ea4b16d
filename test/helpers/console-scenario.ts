/**
 * The teachers' console scenario of its issue, written once for the two places it runs: natively
 * against the image's console on this machine (test/unit/console/console-browser.test.ts) and on a
 * qemu lab VM deployed by `pgi deploy` (test/e2e/console/console.test.ts). The steps drive Debian's
 * chromium as a teacher, a student and the AMI do; what differs between the two places is given by
 * the target: where the console is, its certificate, how a student's invoices are read back (SQL
 * natively, proteus as the student on the VM) and how long things may take (seconds natively,
 * minutes under software emulation).
 */
import {request as httpsRequest} from 'node:https'

import type {Page} from 'playwright-core'
import {expect} from 'vitest'

import {fits, type ConsoleBrowsers} from './console-browser.js'

export interface ConsoleTimeouts {
  /** A page's reaction to a click or a form (a heading, an alert, a table). */
  uiMs: number
  /** A job (class, backup, reset, restore) from its queueing to its end. */
  jobMs: number
  jobIntervalMs: number
  /** The web client's first login into a new database (trytond loads its pool). */
  firstLoginMs: number
  /** A student's invoices read back until they are what is expected. */
  invoicesMs: number
  invoicesIntervalMs: number
}

export interface ConsoleTarget {
  browsers: ConsoleBrowsers
  /** The console's address as the handoff names it, ending in `/console/`. */
  consoleUrl: () => string
  /** The Tryton web client's address. */
  webClientUrl: () => string
  /** The console's certificate (PEM): forms posted outside the browser are verified against it. */
  ca: () => string | Buffer
  /** The descriptions of a student's customer invoices, read as the target can. */
  invoices: (db: string, login: string, password: string) => Promise<string[]>
  timeouts: ConsoleTimeouts
}

export interface Teacher {
  email: string
  name: string
  password: string
}

export interface SheetRow {
  db: string
  login: string
  password: string
}

export const TEACHER_A: Teacher = {email: 'marie.curie@lycee-test.fr', name: 'Marie Curie', password: 'Correct-horse-battery-A'}
export const TEACHER_B: Teacher = {email: 'paul.langevin@lycee-test.fr', name: 'Paul Langevin', password: 'Correct-horse-battery-B'}
export const INVOICE = 'Facture de Léa (test de la console)'
export const CODE_FORMAT = /^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$/
const CLASS_WITH_BAD_ROW = 'Nom;Prénom;Classe\nDUPONT;Léa;BTS CG1\n;Hugo;BTS CG1\nNGUYEN;Lina;BTS CG1\n'
const CLASS_OF_3 = 'Nom;Prénom;Classe\nDUPONT;Léa;BTS CG1\nMARTIN;Hugo;BTS CG1\nNGUYEN;Lina;BTS CG1\n'

export class ConsoleScenario {
  constructor(private readonly t: ConsoleTarget) {}

  url(path = ''): string {
    return `${this.t.consoleUrl()}${path}`
  }

  get origin(): string {
    return new URL(this.t.consoleUrl()).origin
  }

  async shot(page: Page, name: string, fullPage = true): Promise<void> {
    await this.t.browsers.shot(page, name, fullPage)
  }

  async h1(page: Page): Promise<string> {
    return (await page.getByRole('heading', {level: 1}).innerText()).trim()
  }

  async expectH1(page: Page, text: string): Promise<void> {
    await expect.poll(() => this.h1(page), {timeout: this.t.timeouts.uiMs}).toBe(text)
  }

  /** After a form that queues a job: its page, polled until the job ends; its text, which must say it succeeded. */
  async waitJob(page: Page): Promise<string> {
    await expect.poll(() => page.url(), {timeout: this.t.timeouts.uiMs}).toMatch(/\/console\/taches\/\d+/)
    const state = page.locator('#job-state strong')
    await expect.poll(async () => (await state.textContent())?.trim(), {timeout: this.t.timeouts.jobMs, interval: this.t.timeouts.jobIntervalMs}).toMatch(/Terminée|Échec/)
    const text = (await page.locator('main').innerText()).replace(/\s+/g, ' ')
    expect(text, text).toContain('Terminée')
    return text
  }

  /** A form POSTed outside the browser with `page`'s cookies, TLS verified against the console's
   * certificate: what a forged or replayed request looks like to the console. Its HTTP status. */
  async post(page: Page, path: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<number> {
    const url = new URL(path, this.origin)
    const cookie = (await page.context().cookies(url.href)).map((c) => `${c.name}=${c.value}`).join('; ')
    const body = new URLSearchParams(form).toString()
    return new Promise((resolve, reject) => {
      const req = httpsRequest(url, {method: 'POST', ca: this.t.ca(), checkServerIdentity: () => undefined, headers: {
        'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': Buffer.byteLength(body), Cookie: cookie, ...headers}}, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  /** The AMI's page (logged in): creates a teacher and returns the one-time code it shows. */
  async amiCreatesTeacher(ami: Page, teacher: Teacher, shot?: string): Promise<string> {
    await ami.getByLabel('Nom et prénom').fill(teacher.name)
    await ami.getByLabel('Adresse électronique').fill(teacher.email)
    await ami.getByRole('button', {name: 'Créer le compte'}).click()
    const code = (await ami.locator('.code').textContent())!.trim()
    expect(code).toMatch(CODE_FORMAT)
    if (shot) await this.shot(ami, shot)
    await ami.getByRole('link', {name: 'Retour aux comptes des enseignants'}).click()
    return code
  }

  /** Teacher's first visit, keyboard only: the skip link, the fields in order with their labels,
   * the code typed as `typedCode` (the console accepts it without dashes, in any case), the password
   * twice, Enter; ends on the teacher's home. */
  async activateWithKeyboard(page: Page, teacher: Teacher, typedCode: string, shot?: string): Promise<void> {
    await page.goto(this.url('activer'))
    await fits(page, 'activation page')
    await page.keyboard.press('Tab')
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Aller au contenu')
    await page.keyboard.press('Enter')
    const order: string[] = []
    for (let i = 0; i < 5; i++) {
      await page.keyboard.press('Tab')
      order.push(await page.evaluate(() => document.activeElement?.id || document.activeElement?.textContent?.trim() || ''))
    }
    expect(order).toEqual(['email', 'code', 'password', 'confirm', 'Enregistrer mon mot de passe'])
    for (const label of ['Adresse électronique', 'Code d\'activation', 'Nouveau mot de passe', 'Le même mot de passe, à nouveau']) expect(await page.getByLabel(label).count(), label).toBe(1)
    if (shot) await this.shot(page, shot)
    await page.getByLabel('Adresse électronique').focus()
    await page.keyboard.type(teacher.email)
    await page.keyboard.press('Tab')
    await page.keyboard.type(typedCode)
    await page.keyboard.press('Tab')
    await page.keyboard.type(teacher.password)
    await page.keyboard.press('Tab')
    await page.keyboard.type(teacher.password)
    await page.keyboard.press('Enter')
    await this.expectH1(page, 'Mes classes')
  }

  /** Teacher's first visit through the link the AMI hands over (the address filled in), with the mouse. */
  async activateFromLink(page: Page, teacher: Teacher, code: string): Promise<void> {
    await page.goto(this.url(`activer?email=${encodeURIComponent(teacher.email)}`))
    await page.getByLabel('Code d\'activation').fill(code)
    await page.getByLabel('Nouveau mot de passe').fill(teacher.password)
    await page.getByLabel('Le même mot de passe, à nouveau').fill(teacher.password)
    await page.getByRole('button', {name: 'Enregistrer mon mot de passe'}).click()
    await this.expectH1(page, 'Mes classes')
  }

  /** Class BTS CG1 of three per-student databases from the BTS template, a list with a bad row
   * first (refused with its line); then the class page (also on a 768-px tablet) and its sheet.
   * Returns the class page's address and the sheet, sorted by login. */
  async createClassOf3(p: Page, onQueued?: () => Promise<void>): Promise<{classUrl: string; sheet: SheetRow[]; seconds: number}> {
    await p.getByRole('link', {name: 'Créer une classe'}).first().click()
    await p.getByLabel('Nom de la classe').fill('BTS CG1')
    await p.getByLabel('Coller la liste').fill(CLASS_WITH_BAD_ROW)
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await expect.poll(() => p.getByRole('alert').innerText(), {timeout: this.t.timeouts.uiMs}).toContain('ligne 3 : nom manquant')
    await fits(p, 'class form')
    await this.shot(p, '06-classe-erreurs')
    await p.getByLabel('Coller la liste').fill(CLASS_OF_3)
    await p.getByLabel('Une base par élève').check()
    const t0 = Date.now()
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await onQueued?.()
    await this.waitJob(p)
    const seconds = (Date.now() - t0) / 1000
    await this.shot(p, '08-tache-terminee')
    await p.getByRole('link', {name: 'Voir la classe'}).click()
    const classUrl = p.url()
    // the class's model and the three students' databases
    await expect.poll(() => p.locator('tbody tr').count(), {timeout: this.t.timeouts.uiMs}).toBe(4)
    await fits(p, 'class page')
    await this.shot(p, '09-classe')
    await p.setViewportSize({width: 768, height: 1024})
    await p.reload()
    await fits(p, 'class page on a 768-px tablet')
    await this.shot(p, '09-classe-tablette')
    await p.setViewportSize({width: 1280, height: 800})
    await p.getByRole('link', {name: 'Imprimer la fiche de la classe'}).click()
    await this.expectH1(p, 'Classe BTS CG1 — accès à Tryton')
    const sheet = await p.locator('.sheet-table tbody tr').evaluateAll((rows) =>
      rows.map((r) => {
        const c = [...r.querySelectorAll('td')].map((td) => td.textContent!.trim())
        return {db: c[0]!, login: c[1]!, password: c[2]!}
      }),
    )
    expect(sheet.map((s) => s.login).sort()).toEqual(['hugo.martin', 'lea.dupont', 'lina.nguyen'])
    for (const s of sheet) expect(s.password).toMatch(/^[a-z2-9]{10}$/)
    await this.shot(p, '10-fiche')
    return {classUrl, sheet: sheet.sort((a, b) => a.login.localeCompare(b.login)), seconds}
  }

  /** A student logs into the Tryton web client with the sheet's credentials and records a customer
   * invoice for a party made on the way, as a person does (sao reacts to key events). */
  async studentRecordsInvoice(page: Page, s: SheetRow): Promise<void> {
    await page.goto(this.t.webClientUrl())
    await page.locator('#login').waitFor()
    // sao shows a list of the databases once it has read it (a slow call under emulation), a field otherwise
    await page.locator('select#database:visible, input#database:visible').first().waitFor({timeout: this.t.timeouts.firstLoginMs})
    await page.waitForTimeout(1000)
    if (await page.locator('select#database').isVisible()) await page.locator('select#database').selectOption(s.db)
    else await page.locator('input#database').fill(s.db)
    await page.locator('input#login').fill(s.login)
    await page.locator('input#login').press('Enter')
    await page.locator('input[type=password]:visible').fill(s.password)
    await page.locator('input[type=password]:visible').press('Enter')
    // the first login into a new database loads trytond's pool
    await page.locator('#menu .column-char[title="Financier"]').waitFor({timeout: this.t.timeouts.firstLoginMs})
    await this.shot(page, '11-tryton-eleve', false)
    await page.locator('input[placeholder="Actions"]').fill('Factures client')
    await page.locator('.global-search-text', {hasText: 'Factures client'}).first().click()
    const tab = page.locator('#tabcontent > .tab-pane.active')
    await tab.locator('.toolbar button[id="new_"]').click()
    // the new record's form is ready when sao has put the focus on its first field, the party
    await expect.poll(() => page.evaluate(() => (document.activeElement as HTMLInputElement | null)?.name), {timeout: this.t.timeouts.firstLoginMs}).toBe('party')
    // no such party: Tab, and sao offers to make it
    await page.keyboard.type('Client Durand')
    await page.keyboard.press('Tab')
    await page.locator('.modal-dialog').filter({hasText: 'Recherche Tiers'}).getByRole('button', {name: /^\s*nouveau\s*$/i}).click()
    const dlg = page.locator('.modal-dialog').filter({hasText: 'Adresses'})
    await dlg.locator('input[name="name"]').first().fill('Client Durand')
    await dlg.getByRole('button', {name: /^\s*sauver\s*$/i}).click()
    // the new party is set on the invoice; on a loaded machine sao may still show its id ("[2]")
    // until it has read the party's name: either is the party just made (the saved invoice is checked below)
    await expect.poll(() => tab.locator('input[name="party"]').inputValue(), {timeout: this.t.timeouts.firstLoginMs}).toMatch(/^(Client Durand|\[\d+\])$/)
    await tab.locator('input[name="description"]').fill(INVOICE)
    await tab.locator('.toolbar button[id="save"]').click()
    await this.expectInvoices(s, [INVOICE])
    await this.shot(page, '12-tryton-facture', false)
  }

  async expectInvoices(s: SheetRow, expected: string[]): Promise<void> {
    await expect.poll(() => this.t.invoices(s.db, s.login, s.password), {timeout: this.t.timeouts.invoicesMs, interval: this.t.timeouts.invoicesIntervalMs}).toEqual(expected)
  }

  /** The teacher backs up the student's database, resets it (invoice gone: `afterReset` may check
   * more), restores the backup in its place (invoice back). Each job's seconds. */
  async backupResetRestore(p: Page, classUrl: string, s: SheetRow, afterReset?: () => Promise<void>): Promise<{backup_s: number; reset_s: number; restore_s: number}> {
    const db = s.db
    await p.goto(classUrl)
    let t0 = Date.now()
    await p.getByRole('button', {name: `Sauvegarder ${db}`}).click()
    await this.waitJob(p)
    const backup_s = (Date.now() - t0) / 1000
    await p.goto(classUrl)
    await p.getByRole('link', {name: `Réinitialiser ${db}`}).click()
    await fits(p, 'reset page')
    await this.shot(p, '13-reinitialiser')
    // keyboard only: the checkbox, then the button
    await p.getByLabel(`Je veux réinitialiser la base ${db}`).focus()
    await p.keyboard.press('Space')
    await p.keyboard.press('Tab')
    expect(await p.evaluate(() => document.activeElement?.textContent?.trim())).toBe('Réinitialiser la base')
    t0 = Date.now()
    await p.keyboard.press('Enter')
    await this.waitJob(p)
    const reset_s = (Date.now() - t0) / 1000
    // gone, and the sheet's credentials still open it. The reset closed trytond's connections to
    // the database it replaced: trytond's first request on a closed connection may fail, the next
    // ones reconnect — polled
    await this.expectInvoices(s, [])
    await afterReset?.()
    await p.goto(classUrl)
    await p.getByRole('link', {name: `Restaurer ${db}`}).click()
    await fits(p, 'restore page')
    // newest first: the dump kept by the reset, then the backup made above
    const kinds = await p.locator('tbody tr td:nth-child(3)').allInnerTexts()
    expect(kinds.slice(0, 2)).toEqual(['avant réinitialisation ou restauration', 'sauvegarde demandée'])
    await p.locator('tbody tr').nth(1).locator('input[type=radio]').check()
    await p.getByLabel('à la place de la base actuelle', {exact: false}).check()
    await p.getByLabel('Pour remplacer, tapez le nom de la base', {exact: false}).fill(db)
    await this.shot(p, '14-restaurer')
    t0 = Date.now()
    await p.getByRole('button', {name: 'Restaurer', exact: true}).click()
    const text = await this.waitJob(p)
    const restore_s = (Date.now() - t0) / 1000
    expect(text).toContain('la version remplacée est gardée')
    await this.expectInvoices(s, [INVOICE])
    await this.shot(p, '15-restauree')
    return {backup_s, reset_s, restore_s}
  }

  /** Teacher B (activated here, on a 768-px tablet) sees nothing of A's class and gets 403 on its
   * pages and on its forms, with B's own valid CSRF token. `extraPaths` / `extraForms`: more of A's
   * URLs the target has made (a download, a job). */
  async teacherBIsRefused(p: Page, code: string, classUrl: string, db: string, extra: {paths?: string[]; forms?: [string, Record<string, string>][]} = {}): Promise<void> {
    await this.activateFromLink(p, TEACHER_B, code)
    expect(await p.locator('main').innerText()).not.toContain('BTS CG1')
    await fits(p, 'home on a 768-px tablet')
    await this.shot(p, '16-enseignant-b-tablette')
    const cid = /classes\/(\d+)/.exec(classUrl)![1]
    for (const path of [`classes/${cid}`, `classes/${cid}/fiche`, `classes/${cid}/archiver`, `bases/${db}/restaurer`, `bases/${db}/reinitialiser`,
      'taches/1', 'taches/1.json', 'ami/', ...(extra.paths ?? [])]) {
      const r = await p.goto(this.url(path))
      expect(r!.status(), path).toBe(403)
    }
    await this.shot(p, '17-refus-403')
    await p.goto(this.url())
    const token = await p.locator('input[name=csrf_token]').first().inputValue()
    const forms: [string, Record<string, string>][] = [
      [`bases/${db}/reinitialiser`, {confirm: 'oui'}],
      [`bases/${db}/sauvegarder`, {}],
      [`bases/${db}/restaurer`, {backup_id: 'x', mode: 'copy'}],
      [`classes/${cid}/sauvegarder`, {}],
      [`classes/${cid}/archiver`, {confirm: 'BTS CG1'}],
      // a class from A's database as its model
      ['classes', {label: 'Vol', model: db, mode: 'per-student', students: 'DUPONT;Jean\n'}],
      ...(extra.forms ?? []),
    ]
    for (const [path, form] of forms) expect(await this.post(p, `/console/${path}`, {...form, csrf_token: token}, {Origin: this.origin}), path).toBe(403)
  }

  /** A form posted without its CSRF token, with another session's, or from another origin is
   * refused; the same request with its own token from the console's origin is accepted (a job). */
  async csrfIsEnforced(teacherA: Page, teacherB: Page, classUrl: string, db: string): Promise<void> {
    await teacherA.goto(classUrl)
    const path = `/console/bases/${db}/sauvegarder`
    expect(await this.post(teacherA, path, {})).toBe(403)
    const foreign = await teacherB.locator('input[name=csrf_token]').first().inputValue()
    expect(await this.post(teacherA, path, {csrf_token: foreign})).toBe(403)
    const token = await teacherA.locator('input[name=csrf_token]').first().inputValue()
    expect(await this.post(teacherA, path, {csrf_token: token}, {Origin: 'https://evil.example'})).toBe(403)
    expect(await this.post(teacherA, path, {csrf_token: token}, {Origin: this.origin})).toBe(302)
  }

  /** The AMI's audit page (also on a 768-px tablet): its text, to compare with the audit's entries. */
  async auditPageText(ami: Page): Promise<string> {
    await ami.goto(this.url('ami/journal'))
    await fits(ami, 'audit page')
    await this.shot(ami, '18-journal', false)
    await ami.setViewportSize({width: 768, height: 1024})
    await ami.reload()
    await fits(ami, 'audit page on a 768-px tablet')
    await ami.setViewportSize({width: 1280, height: 800})
    return (await ami.locator('main').innerText()).replace(/\s+/g, ' ')
  }
}

/** Each [actor, action, result] is in the audit's entries and its action on the AMI's page. */
export function expectAudited(entries: {actor: string; action: string; result: string}[], pageText: string, expected: readonly (readonly [string, string, string])[]): void {
  for (const [actor, action, result] of expected) {
    const found = entries.some((e) => e.actor === actor && e.action === action && e.result === result)
    expect(found, `${actor} ${action} ${result} in ${JSON.stringify(entries.slice(0, 60))}`).toBe(true)
    expect(pageText).toContain(action)
  }
}
