/**
 * Property-based test of the inventory loader: random mutations of inventory/example
 * (test/helpers/inventory-mutations.ts) never make it throw, and every problem it reports is
 * located in a file of the inventory, under a documented rule, without the secret the mutations
 * scatter. Bytes that are not UTF-8, and control characters, are always errors. A few mutants go
 * through the built CLI in test/e2e/cli/bad-inventory.test.ts.
 */
import {isUtf8} from 'node:buffer'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, relative, resolve} from 'node:path'

import fc from 'fast-check'
import {afterAll, describe, expect, it} from 'vitest'

import {loadInventory} from '../../../src/inventory/load.js'
import {SECRET_UUID} from '../../helpers/bad-inventories.js'
import {FILES, mutate, mutations, type Mutant} from '../../helpers/inventory-mutations.js'

/** The rule ids documented in docs/inventory.md's table ("| `rule` | severity | what |"). */
const DOCUMENTED = new Set([...readFileSync(resolve(import.meta.dirname, '../../../docs/inventory.md'), 'utf8').matchAll(/^\| `([a-z0-9-]+)` \| (?:error|warning)/gm)].map((m) => m[1]!))

const base = mkdtempSync(join(tmpdir(), 'pgi-fuzz-'))
afterAll(() => rmSync(base, {recursive: true, force: true}))
let n = 0

function write(m: Mutant): string {
  const dir = join(base, String(n++))
  mkdirSync(join(dir, 'ca'), {recursive: true})
  // the CA file the example refers to
  writeFileSync(join(dir, 'ca', 'avignon-ca.pem'), readFileSync(resolve(import.meta.dirname, '../../../inventory/example/ca/avignon-ca.pem')))
  for (const f of FILES) writeFileSync(join(dir, f), m[f])
  return dir
}

/** Characters YAML does not allow (see src/inventory/encoding.ts). */
const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u0084\u0086-\u009F\uFFFE\uFFFF]/

describe('inventory loader under random mutations of the example', () => {
  it('documents the rules it checks against', () => {
    expect(DOCUMENTED.size).toBeGreaterThan(40)
    for (const r of ['yaml-syntax', 'not-utf8', 'not-a-file', 'file-too-large', 'secret-literal', 'yaml-tag', 'yaml-limit']) expect(DOCUMENTED).toContain(r)
  })

  it('returns located, documented problems and never throws or echoes a secret', async () => {
    await fc.assert(
      fc.asyncProperty(mutations, async (ms) => {
        const m = mutate(ms)
        const dir = write(m)
        const {problems} = await loadInventory(dir)
        const files = new Map(FILES.map((f) => [f, m[f]]))
        for (const p of problems) {
          const f = relative(dir, resolve(p.file))
          expect(files.has(f as (typeof FILES)[number]), `${p.file} is a file of the inventory`).toBe(true)
          const lines = m[f as (typeof FILES)[number]].toString('utf8').split('\n').length
          expect(p.line, JSON.stringify(p)).toBeGreaterThanOrEqual(1)
          expect(p.line, JSON.stringify(p)).toBeLessThanOrEqual(lines)
          expect(p.column, JSON.stringify(p)).toBeGreaterThanOrEqual(1)
          expect(DOCUMENTED, `rule ${p.rule} is documented in docs/inventory.md`).toContain(p.rule)
          expect(`${p.message} ${p.suggestion ?? ''}`).not.toContain(SECRET_UUID)
        }
        for (const f of FILES) {
          const mine = problems.filter((p) => relative(dir, resolve(p.file)) === f && p.severity === 'error')
          if (!isUtf8(m[f])) expect(mine.map((p) => p.rule), `${f} is not UTF-8`).toContain('not-utf8')
          else if (CONTROL.test(m[f].toString('utf8'))) expect(mine.map((p) => p.rule), `${f} holds a control character`).toContain('yaml-syntax')
        }
        // the same files give the same answer
        expect((await loadInventory(dir)).problems).toEqual(problems)
        rmSync(dir, {recursive: true, force: true})
      }),
      // a new seed at each run (fast-check prints it with a failure); PGI_FUZZ_SEED replays one,
      // PGI_FUZZ_RUNS runs more
      {numRuns: Number(process.env.PGI_FUZZ_RUNS ?? 250), ...(process.env.PGI_FUZZ_SEED ? {seed: Number(process.env.PGI_FUZZ_SEED)} : {})},
    )
  }, 60_000)
})
