/**
 * The corpus of bad inventories (test/helpers/bad-inventories.ts) through the loader, from the
 * sources: every case gives problems, located, with the expected rules, no secret in any message,
 * and the loader never throws. The same corpus runs through the built CLI in
 * test/e2e/cli/bad-inventory.test.ts (the bundle, where import() of CommonJS packages differs).
 */
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, relative, resolve} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {loadInventory} from '../../../src/inventory/load.js'
import {CORPUS} from '../../helpers/bad-inventories.js'

const dirs: string[] = []
afterAll(() => {
  for (const d of dirs) {
    // mode-000 entries of the EACCES cases: make them removable again
    rmSync(d, {recursive: true, force: true})
  }
})

// EACCES cannot happen to root in this process (it overrides file permissions): those cases run
// through the CLI in test/e2e/cli/bad-inventory.test.ts, with the override dropped.
const asRoot = process.getuid?.() === 0

describe('bad inventories through the loader', () => {
  expect(CORPUS.length).toBeGreaterThanOrEqual(40)

  it.each(CORPUS.filter((c) => !(asRoot && c.unreadable)).map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const dir = mkdtempSync(join(tmpdir(), 'pgi-bad-inv-'))
    dirs.push(dir)
    const input = c.make(dir)
    const {problems} = await loadInventory(join(dir, input))
    const errors = problems.filter((p) => p.severity === 'error')
    const rel = (f: string) => relative(dir, resolve(f))
    // every problem is located and has a rule
    for (const p of problems) {
      expect(p.line, JSON.stringify(p)).toBeGreaterThanOrEqual(1)
      expect(p.column, JSON.stringify(p)).toBeGreaterThanOrEqual(1)
      expect(p.rule).toMatch(/^[a-z0-9]+(-[a-z0-9]+)*$/)
      expect(p.message.length, p.message).toBeLessThan(400)
    }
    if (c.exit === 3) expect(errors.length, JSON.stringify(problems)).toBeGreaterThan(0)
    else expect(errors, JSON.stringify(errors)).toEqual([])
    const rules = (c.exit === 3 ? errors : problems).map((p) => p.rule)
    for (const r of c.rules) expect(rules, JSON.stringify(problems)).toContain(r)
    if (c.at) {
      const first = problems.find((p) => p.rule === c.rules[0])!
      expect({file: rel(first.file), line: first.line, column: first.column}).toEqual(c.at)
    }
    if (c.secret) expect(JSON.stringify(problems)).not.toContain(c.secret)
  })
})
