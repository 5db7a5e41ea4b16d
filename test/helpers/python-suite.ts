/**
 * A Python unittest suite of the image's tools (pgi-db, pgi-backup, the teachers' console), run
 * natively once with Debian's python3 and reported to vitest test by test: each `def test_…` of
 * the file is one test here, failing with the Python traceback. The suite is skipped, with the
 * reason, when `missing()` names what this machine lacks (scripts/install-deps.sh --test).
 */
import {spawn, spawnSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'

import {beforeAll, describe, expect, it} from 'vitest'

export const PYTHON = '/usr/bin/python3'

export function describePythonSuite(opts: {title: string; dir: string; module: string; missing: () => string | null; env?: NodeJS.ProcessEnv}): void {
  const why = opts.missing()
  const names = [...readFileSync(join(opts.dir, `${opts.module}.py`), 'utf8').matchAll(/^ {4}def (test_\w+)\(self\):/gm)].map((m) => m[1]!)
  describe.skipIf(why !== null)(`${opts.title}${why ? ` (skipped: ${why})` : ''}`, () => {
    const results = new Map<string, {status: string; detail: string}>()
    let output = ''

    beforeAll(async () => {
      const code = await new Promise<number>((resolve) => {
        const child = spawn(PYTHON, ['-m', 'unittest', '-v', opts.module], {cwd: opts.dir, env: {...process.env, PYTHONUNBUFFERED: '1', ...opts.env}})
        child.stdout.on('data', (d: Buffer) => (output += d.toString()))
        child.stderr.on('data', (d: Buffer) => (output += d.toString()))
        child.on('close', (c) => resolve(c ?? 1))
      })
      // "test_x (module.Class.test_x)" [docstring line] " ... ok"; a test's own stderr may come between
      for (const m of output.matchAll(/^(test_\w+) \([\w.]+\)(?:\n[^\n]*?)? \.\.\. (?:.*?)(ok|FAIL|ERROR|skipped.*)$/gms)) {
        results.set(m[1]!, {status: m[2]!, detail: ''})
      }
      for (const m of output.matchAll(/^(?:FAIL|ERROR): (test_\w+) \([\w.]+\)[^\n]*\n(?:[^\n]*\n)?-+\n([\s\S]*?)(?=\n={10,}|\n-{10,}\nRan )/gm)) {
        const r = results.get(m[1]!)
        if (r) {
          r.status = r.status === 'ok' ? 'FAIL' : r.status
          r.detail += `${m[2]!.slice(-4000)}\n`
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
}

/** Why this machine cannot run the image tools' native suites (pgitest.py in `dir` says), or null. */
export function missingImageTools(dir: string): string | null {
  const r = spawnSync(PYTHON, ['-c', 'import pgitest; print(pgitest.missing_prerequisites() or "")'], {cwd: dir, encoding: 'utf8'})
  if (r.error) return `${PYTHON} not found`
  if (r.status !== 0) return `cannot check the prerequisites: ${r.stderr.trim().slice(-300)}`
  return r.stdout.trim() || null
}
