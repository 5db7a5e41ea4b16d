import {existsSync} from 'node:fs'

import {chromium} from 'playwright-core'

/**
 * Tryton's web client (sao) as a person uses it, in Debian's chromium driven by playwright-core (no
 * browser download): open the server's web address, type the database and the user name, then the
 * password in sao's password dialog, and wait for the session and the menu. Works with sao 6.0 and
 * 7.0 (the same login dialog).
 */
export const CHROMIUM = '/usr/bin/chromium'

export function hasChromium(): boolean {
  return existsSync(CHROMIUM)
}

export interface SaoLogin {
  /** sao's own version (Sao.__version__), "7.0.28". */
  version: string
  userId: number
  /** The top-level menu entries the user sees. */
  menu: string[]
}

export async function saoLogin(url: string, database: string, login: string, password: string, timeoutMs = 240_000): Promise<SaoLogin> {
  // root runs the tests: chromium's sandbox needs an unprivileged user
  const browser = await chromium.launch({executablePath: CHROMIUM, headless: true, args: ['--no-sandbox']})
  // what the page met on the way, for the error when a step times out: page errors, HTTP errors
  // and Tryton's RPC errors (the method and the answer's error; never a request body: the
  // password travels in one)
  const seen: string[] = []
  let step = 'opening the page'
  try {
    const page = await browser.newPage({locale: 'fr-FR'})
    page.on('pageerror', (e) => seen.push(`page error: ${e.message.split('\n')[0]}`))
    page.on('response', (r) => {
      const req = r.request()
      let method = ''
      try {
        method = (JSON.parse(req.postData() ?? '{}') as {method?: string}).method ?? ''
      } catch {
        // not JSON-RPC
      }
      if (r.status() >= 400) {
        seen.push(`HTTP ${r.status()} ${req.method()} ${new URL(r.url()).pathname}${method ? ` ${method}` : ''}`)
      } else if (method) {
        void r.text().then(
          (body) => {
            const err = (JSON.parse(body) as {error?: unknown}).error
            if (err) seen.push(`RPC ${method}: ${JSON.stringify(err).slice(0, 300)}`)
          },
          () => undefined,
        )
      }
    })
    page.setDefaultTimeout(timeoutMs)
    await page.goto(url)
    await page.locator('#login').waitFor()
    // the server's databases (common.db.list, answered after the dialog shows): a list to choose
    // from, or the only one, shown read-only; a field to type in when the server lists none
    const field = page.locator('#database:visible')
    await field.waitFor()
    if ((await field.evaluate((e) => e.tagName)) === 'SELECT') await field.selectOption(database)
    else if (await field.isEditable()) await field.fill(database)
    else if ((await field.inputValue()) !== database) throw new Error(`sao offers only database ${await field.inputValue()}, not ${database}`)
    step = 'logging in'
    await page.locator('input#login').fill(login)
    await page.locator('input#login').press('Enter')
    await page.locator('input[type=password]:visible').fill(password)
    await page.locator('input[type=password]:visible').press('Enter')
    // logged in: a session with a user (a refused password brings sao's password dialog back,
    // and this times out), and the menu drawn
    await page.waitForFunction(() => (globalThis as unknown as {Sao?: {Session?: {current_session?: {user_id?: number}}}}).Sao?.Session?.current_session?.user_id, undefined, {timeout: timeoutMs})
    step = 'waiting for the menu after the login'
    await page.locator('#menu .column-char').first().waitFor()
    const menu = (await page.locator('#menu .column-char').allInnerTexts()).map((t) => t.trim()).filter(Boolean)
    const info = await page.evaluate(() => {
      const sao = (globalThis as unknown as {Sao: {__version__: string; Session: {current_session: {user_id: number}}}}).Sao
      return {version: sao.__version__, userId: sao.Session.current_session.user_id}
    })
    return {...info, menu}
  } catch (err) {
    const dialogs = await Promise.all(
      browser.contexts().flatMap((c) => c.pages()).map((p) => p.locator('.modal-dialog:visible').allInnerTexts().catch(() => [] as string[])),
    )
    throw new Error(`sao at ${url}, ${step}: ${(err as Error).message.split('\n')[0]}\nopen dialogs: ${JSON.stringify(dialogs.flat().map((t) => t.replace(/\s+/g, ' ').slice(0, 200)))}\nseen: ${seen.slice(-30).join('\n  ') || 'nothing'}`, {cause: err})
  } finally {
    await browser.close()
  }
}
