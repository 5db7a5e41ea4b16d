/**
 * The image's database engine (pgi-db and /usr/local/lib/pgi/pgidb.py), run natively against a
 * throwaway PostgreSQL cluster and a real trytond: the Python suite test_pgidb.py (unittest, run
 * once here; each of its tests is reported as one test below). Skipped, with the reason, on a
 * machine without what it needs (root, Debian's postgresql, tryton-server, its modules and
 * tryton-proteus: `bash scripts/install-deps.sh --test` installs them).
 * The template database it starts from is built once by the image's make-template (minutes) and
 * kept in PGI_TEST_CACHE (/var/tmp/pgi-test-cache); later runs take about three minutes.
 */
import {spawn, spawnSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {beforeAll, describe, expect, it} from 'vitest'

const here = dirname(fileURLToPath(import.meta.url))
const python = '/usr/bin/python3'

function missing(): string | null {
  const r = spawnSync(python, ['-c', 'import pgitest; print(pgitest.missing_prerequisites() or "")'], {cwd: here, encoding: 'utf8'})
  if (r.error) return `${python} not found`
  if (r.status !== 0) return `cannot check the prerequisites: ${r.stderr.trim().slice(-300)}`
  return r.stdout.trim() || null
}

const why = missing()
const names = [...readFileSync(join(here, 'test_pgidb.py'), 'utf8').matchAll(/^ {4}def (test_\w+)\(self\):/gm)].map((m) => m[1])

describe.skipIf(why !== null)(`pgi-db engine, native${why ? ` (skipped: ${why})` : ''}`, () => {
  const results = new Map<string, {status: string; detail: string}>()
  let output = ''

  beforeAll(async () => {
    const code = await new Promise<number>((resolve) => {
      const child = spawn(python, ['-m', 'unittest', '-v', 'test_pgidb'], {cwd: here, env: {...process.env, PYTHONUNBUFFERED: '1'}})
      child.stdout.on('data', (d: Buffer) => (output += d.toString()))
      child.stderr.on('data', (d: Buffer) => (output += d.toString()))
      child.on('close', (c) => resolve(c ?? 1))
    })
    for (const m of output.matchAll(/^(test_\w+) \([\w.]+\) \.\.\. (?:.*?)(ok|FAIL|ERROR|skipped.*)$/gms)) {
      results.set(m[1], {status: m[2], detail: ''})
    }
    for (const m of output.matchAll(/^(?:FAIL|ERROR): (test_\w+) \([\w.]+\)\n-+\n([\s\S]*?)(?=\n={10,}|\n-{10,}\nRan )/gm)) {
      const r = results.get(m[1])
      if (r) r.detail = m[2].slice(-4000)
    }
    if (code !== 0 && results.size === 0) throw new Error(`the Python suite did not run:\n${output.slice(-4000)}`)
  }, 40 * 60_000)

  it.each(names)('%s', (name) => {
    const r = results.get(name)
    expect(r, `no result for ${name} in the suite's output:\n${output.slice(-3000)}`).toBeDefined()
    expect(r!.status, r!.detail).toBe('ok')
  })
})
