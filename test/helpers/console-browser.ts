/**
 * Chromium (Debian's, driven by playwright-core) on the teachers' console, for the native console
 * test (test/unit/console) and the qemu-VM one (test/e2e/console): windows that trust only the
 * console's own certificate (its public key, as an AMI does after comparing the handoff's
 * fingerprint), the console's Server-Timing figures gathered per page, screenshots, the layout
 * check, and the clean-up of every window and profile.
 */
import {createHash, type X509Certificate} from 'node:crypto'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {chromium, type BrowserContext, type Page} from 'playwright-core'
import {expect} from 'vitest'

import {CHROMIUM} from './sao.js'

/** The base64 SHA-256 of a certificate's public key, as chromium's --ignore-certificate-errors-spki-list takes it. */
export function spkiOf(cert: X509Certificate): string {
  return createHash('sha256').update(cert.publicKey.export({type: 'spki', format: 'der'})).digest('base64')
}

export interface TimingRow {
  path: string
  n: number
  max_ms: number
  median_ms: number
}

export class ConsoleBrowsers {
  /** The console certificate's public key (spkiOf), set once the certificate is known. */
  spki = ''
  /** Server time (ms) per "METHOD /path" (numbers and database names folded), from the console's Server-Timing header. */
  readonly timings: Record<string, number[]> = {}
  private readonly contexts: BrowserContext[] = []
  private readonly dirs: string[] = []

  constructor(private readonly opts: {shots: string; profilePrefix: string; timeouts?: {actionMs: number; navigationMs: number}}) {}

  async open(viewport = {width: 1280, height: 800}): Promise<{ctx: BrowserContext; page: Page}> {
    const ud = mkdtempSync(join(tmpdir(), this.opts.profilePrefix))
    this.dirs.push(ud)
    const ctx = await chromium.launchPersistentContext(ud, {
      executablePath: CHROMIUM,
      headless: true,
      locale: 'fr-FR',
      viewport,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--lang=fr-FR', `--ignore-certificate-errors-spki-list=${this.spki}`],
    })
    this.contexts.push(ctx)
    if (this.opts.timeouts) {
      ctx.setDefaultTimeout(this.opts.timeouts.actionMs)
      ctx.setDefaultNavigationTimeout(this.opts.timeouts.navigationMs)
    }
    const page = ctx.pages()[0] ?? (await ctx.newPage())
    page.on('response', (r) => {
      const t = /app;dur=([\d.]+)/.exec(r.headers()['server-timing'] ?? '')
      const u = new URL(r.url())
      if (t && !u.pathname.includes('/static/')) {
        ;(this.timings[`${r.request().method()} ${u.pathname.replace(/\/\d+/g, '/N').replace(/bases\/[a-z0-9_]+/, 'bases/DB')}`] ??= []).push(Number(t[1]))
      }
    })
    return {ctx, page}
  }

  async shot(page: Page, name: string, fullPage = true): Promise<void> {
    await page.screenshot({path: join(this.opts.shots, `${name}.png`), fullPage})
  }

  /** The pages' server times, slowest first. */
  timingRows(): TimingRow[] {
    return Object.entries(this.timings)
      .map(([path, v]) => ({path, n: v.length, max_ms: Math.max(...v), median_ms: [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!}))
      .sort((a, b) => b.max_ms - a.max_ms)
  }

  /** Closes every window and removes the profiles; writes the server times beside the screenshots. */
  async close(extra: Record<string, unknown> = {}): Promise<void> {
    for (const c of this.contexts) await c.close().catch(() => undefined)
    for (const d of this.dirs) rmSync(d, {recursive: true, force: true, maxRetries: 5, retryDelay: 200})
    writeFileSync(join(this.opts.shots, 'server-timing.json'), `${JSON.stringify({...extra, pages: this.timingRows()}, null, 1)}\n`)
  }
}

/** The page fits its window's width (no horizontal scroll): 1280×800 and a 768-px tablet. */
export async function fits(page: Page, what: string): Promise<void> {
  const {scroll, width} = await page.evaluate(() => ({scroll: document.documentElement.scrollWidth, width: window.innerWidth}))
  expect(scroll, `${what}: the page is wider than the window (${scroll} > ${width} px)`).toBeLessThanOrEqual(width)
}
