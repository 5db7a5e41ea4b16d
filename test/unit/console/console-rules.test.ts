/**
 * The teachers' console's rules, natively (test_console.py: the image's console application, its
 * jobs and command line against a throwaway PostgreSQL cluster and trytond; run once here, each of
 * its tests reported as one test below): every route refused to another teacher, every form
 * without its CSRF token refused, login rate limits, accounts from `pgi-console`, the database
 * role without superuser rights, imports validated first, archives, backups seen only by their
 * teacher, one job per database, interrupted jobs. The browser scenario is console-browser.test.ts.
 * Skipped, with the reason, on a machine without what it needs (scripts/install-deps.sh --test).
 */
import {spawn, spawnSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {beforeAll, describe, expect, it} from 'vitest'

const here = dirname(fileURLToPath(import.meta.url))
const python = '/usr/bin/python3'

function missing(): string | null {
  const r = spawnSync(python, [join(here, 'consolelab.py'), 'check'], {encoding: 'utf8'})
  if (r.error) return `${python} not found`
  if (r.status !== 0) return `cannot check the prerequisites: ${r.stderr.trim().slice(-300)}`
  return r.stdout.trim() || null
}

const why = missing()
const names = [...readFileSync(join(here, 'test_console.py'), 'utf8').matchAll(/^ {4}def (test_\w+)\(self\):/gm)].map((m) => m[1])

describe.skipIf(why !== null)(`teachers' console rules, native${why ? ` (skipped: ${why})` : ''}`, () => {
  const results = new Map<string, {status: string; detail: string}>()
  let output = ''

  beforeAll(async () => {
    const code = await new Promise<number>((resolve) => {
      const child = spawn(python, ['-m', 'unittest', '-v', 'test_console'], {cwd: here, env: {...process.env, PYTHONUNBUFFERED: '1', PYTHONWARNINGS: 'ignore'}})
      child.stdout.on('data', (d: Buffer) => (output += d.toString()))
      child.stderr.on('data', (d: Buffer) => (output += d.toString()))
      child.on('close', (c) => resolve(c ?? 1))
    })
    for (const m of output.matchAll(/^(test_\w+) \([\w.]+\)(?:\n[^\n]*?)? \.\.\. (ok|FAIL|ERROR|skipped.*)$/gm)) {
      results.set(m[1]!, {status: m[2]!, detail: ''})
    }
    for (const m of output.matchAll(/^(?:FAIL|ERROR): (test_\w+) \([\w.]+\)[^\n]*\n(?:[^\n]*\n)?-+\n([\s\S]*?)(?=\n={10,}|\n-{10,}\nRan )/gm)) {
      const r = results.get(m[1]!)
      if (r) {
        r.status = r.status === 'ok' ? 'FAIL' : r.status
        r.detail += `${m[2]!.slice(-3000)}\n`
      }
    }
    if (code !== 0 && results.size === 0) throw new Error(`the Python suite did not run:\n${output.slice(-4000)}`)
  }, 40 * 60_000)

  it.each(names)('%s', (name) => {
    const r = results.get(name)
    expect(r, `no result for ${name} in the suite's output:\n${output.slice(-3000)}`).toBeDefined()
    expect(r!.status, r!.detail).toBe('ok')
  })
})
