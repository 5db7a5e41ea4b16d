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
import {X509Certificate} from 'node:crypto'
import {existsSync, mkdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {createInterface} from 'node:readline'
import {fileURLToPath} from 'node:url'

import type {Page} from 'playwright-core'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ConsoleBrowsers, fits, spkiOf} from '../../helpers/console-browser.js'
import {ConsoleScenario, expectAudited, TEACHER_A as A, TEACHER_B as B, type SheetRow} from '../../helpers/console-scenario.js'

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
  const scenario = new ConsoleScenario({
    browsers,
    consoleUrl: () => `${lab.info.https}/console/`,
    webClientUrl: () => `${lab.info.https}/`,
    ca: () => readFileSync(lab.info.tls_cert),
    invoices: (db) => invoices(db),
    timeouts: {uiMs: 30_000, jobMs: 240_000, jobIntervalMs: 1000, firstLoginMs: 120_000, invoicesMs: 60_000, invoicesIntervalMs: 1000},
  })

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
  let teacherA: Page
  let teacherB: Page
  let ami: Page
  let sheet: SheetRow[] = []
  let classUrl = ''
  const student = () => sheet.find((s) => s.login === 'lea.dupont')!
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
    await ami.goto(scenario.url('ami/connexion'))
    await shot(ami, '01-ami-connexion')
    await ami.getByLabel('Identifiant de l\'administrateur SQL').fill(lab.info.ami_login)
    await ami.getByLabel('Mot de passe').fill('not-the-password')
    await ami.getByRole('button', {name: 'Se connecter'}).click()
    await expect.poll(() => ami.getByRole('alert').innerText(), {timeout: 30_000}).toContain('incorrect')
    await ami.getByLabel('Mot de passe').fill(lab.info.ami_password)
    await ami.getByRole('button', {name: 'Se connecter'}).click()
    await scenario.expectH1(ami, 'Comptes des enseignants')
    codes[A.email] = await scenario.amiCreatesTeacher(ami, A, '02-ami-code')
    codes[B.email] = await scenario.amiCreatesTeacher(ami, B)
    await expect.poll(() => ami.locator('tbody tr').count(), {timeout: 30_000}).toBe(2)
    await fits(ami, 'AMI page')
    await shot(ami, '03-ami-enseignants')
  })

  step('teacher A sets a password with the one-time code (keyboard only), then logs in again with it', async () => {
    ;({page: teacherA} = await browser())
    // typed as a person may: lower case, without the dashes
    await scenario.activateWithKeyboard(teacherA, A, codes[A.email]!.toLowerCase().replace(/-/g, ''), '04-activer')
    // the code was spent
    const {page: again} = await browser()
    await again.goto(scenario.url('activer'))
    await again.getByLabel('Adresse électronique').fill(A.email)
    await again.getByLabel('Code d\'activation').fill(codes[A.email]!)
    await again.getByLabel('Nouveau mot de passe').fill('Another-password-1')
    await again.getByLabel('Le même mot de passe, à nouveau').fill('Another-password-1')
    await again.getByRole('button', {name: 'Enregistrer mon mot de passe'}).click()
    await expect.poll(() => again.getByRole('alert').innerText(), {timeout: 30_000}).toContain('code invalide')
    // logging in: keyboard only
    await again.goto(scenario.url('connexion'))
    await shot(again, '05-connexion')
    await again.keyboard.type(A.email) // the address field has the focus
    await again.keyboard.press('Tab')
    await again.keyboard.type(A.password)
    await again.keyboard.press('Enter')
    await scenario.expectH1(again, 'Mes classes')
  })

  step('teacher A creates a class of 3 from the BTS template (bad rows first reported with their line) and prints the sheet', async () => {
    ;({classUrl, sheet} = await scenario.createClassOf3(teacherA))
    expect(sheet).toHaveLength(3)
  })

  step('a class sheet of 30 (shared mode) prints on one A4 page', async () => {
    const p = teacherA
    const names = Array.from({length: 30}, (_, i) => `NOM${String.fromCharCode(65 + (i % 26))}${i};Prénom${i};BTS CG2`).join('\n')
    await p.goto(scenario.url('classes/nouvelle'))
    await p.getByLabel('Nom de la classe').fill('BTS CG2')
    await p.getByLabel('Coller la liste').fill(`Nom;Prénom;Classe\n${names}\n`)
    await p.getByLabel('Une base partagée').check()
    await p.getByRole('button', {name: 'Créer la classe'}).click()
    await scenario.waitJob(p)
    await p.getByRole('link', {name: 'Imprimer la fiche de la classe'}).click()
    expect(await p.locator('.sheet-table tbody tr').count()).toBe(30)
    await p.emulateMedia({media: 'print'})
    const pdf = await p.pdf({format: 'A4', printBackground: false})
    await p.emulateMedia({media: 'screen'})
    writeFileSync(join(shots, '10-fiche-30.pdf'), pdf)
    const pages = pdf.toString('latin1').match(/\/Type\s*\/Page[^s]/g) ?? []
    expect(pages.length).toBe(1)
  })

  step('a student logs into the Tryton web client with the sheet\'s credentials and records an invoice', async () => {
    const {page} = await browser()
    await scenario.studentRecordsInvoice(page, student())
  })

  step('teacher A backs up the student\'s database, resets it (invoice gone), restores the backup (invoice back)', async () => {
    await scenario.backupResetRestore(teacherA, classUrl, student(), async () => {
      // the sheet's credentials still work after the reset (the student's user kept with its password)
      const users = await lab.sql(student().db, "SELECT login FROM res_user WHERE login = 'lea.dupont' AND active")
      expect(users).toHaveLength(1)
    })
  })

  step('teacher A downloads the student\'s dump (a pg_dump archive)', async () => {
    const p = teacherA
    await p.goto(classUrl)
    await p.getByRole('button', {name: `Télécharger ${student().db}`}).click()
    await scenario.waitJob(p)
    const [download] = await Promise.all([p.waitForEvent('download'), p.getByRole('link', {name: /^Télécharger /}).click()])
    const path = await download.path()
    expect(readFileSync(path!).subarray(0, 5).toString()).toBe('PGDMP')
    expect(download.suggestedFilename()).toMatch(new RegExp(`^${student().db}-\\d{8}-\\d{4}\\.dump$`))
  })

  step('teacher B cannot see or act on A\'s class: 403, direct URLs and forms included', async () => {
    ;({page: teacherB} = await browser({width: 768, height: 1024}))
    const db = student().db
    await scenario.teacherBIsRefused(teacherB, codes[B.email]!, classUrl, db, {paths: ['taches/1/fichier'], forms: [[`bases/${db}/telecharger`, {}]]})
    const jobs = await lab.ask<{out: {action: string; actor: string; result: string}[]}>({console: ['audit', '--actor', B.email]})
    expect(jobs.out.filter((e) => e.action.startsWith('tache.') && e.result !== 'refusé')).toEqual([])
  })

  step('a form posted without its CSRF token, or with another session\'s, is refused', async () => {
    await scenario.csrfIsEnforced(teacherA, teacherB, classUrl, student().db)
  })

  step('the audit log shows each action, in the AMI\'s page and in `pgi-console audit`', async () => {
    const page = await scenario.auditPageText(ami)
    const cli = (await lab.ask<{status: number; out: {actor: string; action: string; result: string; target: string}[]}>({console: ['audit', '--limit', '1000']}))
    expect(cli.status).toBe(0)
    const amiActor = `ami:${lab.info.ami_login}`
    expectAudited(cli.out, page, [
      [amiActor, 'ami.connexion', 'ok'],
      [amiActor, 'ami.connexion', 'échec'],
      [amiActor, 'enseignant.creer', 'ok'],
      [A.email, 'compte.activer', 'ok'],
      [A.email, 'connexion', 'ok'],
      [A.email, 'tache.class', 'ok'],
      [A.email, 'classe.fiche', 'ok'],
      [A.email, 'tache.backup', 'ok'],
      [A.email, 'tache.reset', 'ok'],
      [A.email, 'tache.restore', 'ok'],
      [A.email, 'tache.download', 'ok'],
      [A.email, 'csrf', 'refusé'],
      [B.email, 'compte.activer', 'ok'],
      [B.email, 'classe.voir', 'refusé'],
      [B.email, 'base.reinitialiser', 'refusé'],
      [B.email, 'classe.creer', 'refusé'],
    ])
  })
})
