/**
 * The one report writer (src/report): JUnit XML valid against test/schemas/junit.xsd (checked
 * with xmllint, Debian's libxml2-utils) whatever the text holds (a guest's control characters,
 * quotes, markup, newlines), one case per establishment or problem with its reason; Markdown fit
 * for a merge-request comment; the `--report junit FILE` flag parsed at the edge.
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {mkdtemp, readFile, readdir, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {joinReportArgs, parseReportTarget} from '../../../src/cli/flags.js'
import {UsageError} from '../../../src/errors.js'
import {rolloutSuite, validationSuite} from '../../../src/report/suites.js'
import type {ReportSuite} from '../../../src/report/types.js'
import {renderJunit, renderMarkdown, writeReports} from '../../../src/report/write.js'
import type {RolloutResult} from '../../../src/rollout/run.js'

const XSD = resolve(import.meta.dirname, '..', '..', 'schemas', 'junit.xsd')
let tmp: string
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-report-'))
})
afterAll(async () => {
  await rm(tmp, {recursive: true, force: true})
})

/** xmllint's verdict on a document against the kept JUnit schema. */
async function validate(xml: string): Promise<{ok: boolean; out: string}> {
  const f = join(tmp, `doc-${Math.random().toString(36).slice(2)}.xml`)
  await writeFile(f, xml)
  const r = spawnSync('xmllint', ['--noout', '--schema', XSD, f], {encoding: 'utf8'})
  return {ok: r.status === 0, out: r.stderr}
}

const nasty = 'trytond: "échec" <b>&amp; | pipe\u0001\u001b[31m\nsecond line\ttab \uD800 😀'

function rollout(): RolloutResult {
  const base = {hypervisor: 'hv-nord', node: 'pve1', to: '2026.12.0', from: '2026.11.0', durationMs: 1234}
  return {
    id: '20261204T140000Z-abc123',
    version: '2026.12.0',
    state: 'halted',
    reason: 'halted: 2 failure(s)',
    waves: [{ring: 'canary', total: 2, counts: {updated: 1, 'rolled-back': 1}}, {ring: 'pilot', total: 3, counts: {interrupted: 1, 'rollback-failed': 1, 'not-started': 1}}],
    establishments: [
      {...base, uai: '0130040Y', name: 'Lycée A', vmid: 1001, ring: 'canary', outcome: 'updated', step: 'committed'},
      {...base, uai: '0130041Z', name: 'Lycée <B>', vmid: 1002, ring: 'canary', outcome: 'rolled-back', step: 'rolled-back', reason: nasty},
      {...base, uai: '0130042A', name: 'Lycée C', vmid: 1003, ring: 'pilot', outcome: 'interrupted', step: 'swapped', reason: 'runner stopped'},
      {...base, uai: '0130043B', name: 'Lycée D', vmid: 1004, ring: 'pilot', outcome: 'rollback-failed', step: 'rollback-failed', reason: 'x'},
      {...base, uai: '0130044C', name: 'Lycée E', vmid: 1005, ring: 'pilot', outcome: 'not-started', reason: 'halted'},
    ],
    counts: {updated: 1, 'rolled-back': 1, interrupted: 1, 'rollback-failed': 1, 'not-started': 1},
    failures: 3,
    threshold: 0,
    exitCode: 4,
    wallMs: 65_432,
  }
}

describe('JUnit', () => {
  it('has xmllint (libxml2-utils, installed by scripts/install-deps.sh --test)', () => {
    expect(execFileSync('xmllint', ['--version'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']}).length).toBeGreaterThanOrEqual(0)
  })

  it('a rollout: one case per establishment, its outcome and reason; valid against the kept schema', async () => {
    const suite = rolloutSuite('pgi rollout start 2026.12.0', rollout(), new Date('2026-12-04T14:00:00.123Z'))
    const xml = renderJunit(suite)
    const v = await validate(xml)
    expect(v.ok, v.out).toBe(true)
    expect(xml.match(/<testcase /g)).toHaveLength(5)
    expect(xml).toContain('tests="5" failures="1" errors="2" skipped="1"')
    expect(xml).toContain('<failure type="rolled-back" message="rolled-back at step rolled-back: trytond: &quot;échec&quot; &lt;b&gt;&amp;amp; | pipe\uFFFD\uFFFD[31m&#10;second line&#9;tab \uFFFD 😀"')
    expect(xml).toContain('classname="pgi.rollout.pilot" name="0130042A Lycée C (hv-nord/pve1 VM 1003)"')
    expect(xml).toContain('<error type="interrupted" message="interrupted at step swapped: runner stopped"')
    expect(xml).toContain('<skipped message="not-started: halted"/>')
    expect(xml).toContain('<property name="rollout" value="20261204T140000Z-abc123"/>')
    expect(xml).toContain('<property name="exit-code" value="4"/>')
    expect(xml).toContain('timestamp="2026-12-04T14:00:00Z"')
  })

  it('the schema can fail: a case with two results, a negative count, text outside the model', async () => {
    const good = renderJunit(rolloutSuite('x', rollout(), new Date()))
    expect((await validate(good.replace('<skipped message="not-started: halted"/>', '<skipped/><failure/>'))).ok).toBe(false)
    expect((await validate(good.replace('tests="5" failures="1"', 'tests="5" failures="-1"'))).ok).toBe(false)
    expect((await validate(good.replace('<properties>', '<properties><bogus/>'))).ok).toBe(false)
    expect((await validate(good.replace(/ classname="[^"]*"/, ''))).ok).toBe(false)
  })

  it('an inventory validation: one case per problem with its place and rule; a clean file passes', async () => {
    const suite = validationSuite(
      'pgi inventory validate',
      {
        path: 'inv',
        files: ['inv/a.yaml', 'inv/b.yaml', 'inv/c.yaml'],
        hypervisors: 1,
        establishments: 2,
        groups: 0,
        errors: 2,
        warnings: 1,
        valid: false,
        problems: [
          {file: 'inv/a.yaml', line: 3, column: 7, rule: 'uai-check-letter', message: 'UAI 0130040Z: check letter should be Y', suggestion: 'use 0130040Y', severity: 'error'},
          {file: 'inv/a.yaml', line: 9, column: 1, rule: 'duplicate-vmid', message: 'vmid 1001 already used', severity: 'error'},
          {file: 'inv/b.yaml', line: 2, column: 3, rule: 'window-short', message: 'short window', severity: 'warning'},
        ],
      },
      new Date(),
      3,
    )
    const xml = renderJunit(suite)
    expect((await validate(xml)).ok).toBe(true)
    expect(xml).toContain('tests="4" failures="2" errors="0"')
    expect(xml).toContain('name="inv/a.yaml:3:7 uai-check-letter"')
    expect(xml).toContain('<failure type="uai-check-letter" message="UAI 0130040Z: check letter should be Y">UAI 0130040Z: check letter should be Y\nuse 0130040Y</failure>')
    expect(xml).toContain('name="inv/c.yaml is valid"')
    expect(xml).not.toContain('inv/a.yaml is valid')
  })
})

describe('Markdown', () => {
  it('verdict, counts, failures first, one row per establishment, cells escaped', () => {
    const md = renderMarkdown(rolloutSuite('pgi rollout start 2026.12.0', rollout(), new Date()))
    const lines = md.split('\n')
    expect(lines[0]).toBe('### ❌ `pgi rollout start 2026.12.0` — exit 4')
    expect(md).toContain('⛔ 2 error · ❌ 1 failed · ⏭️ 1 skipped · ✅ 1 passed')
    const rows = lines.filter((l) => /^\| (✅|❌|⛔|⏭️) \|/.test(l))
    expect(rows).toHaveLength(5)
    expect(rows.map((r) => r.split(' | ')[1])).toEqual(['0130042A', '0130043B', '0130041Z', '0130044C', '0130040Y'])
    const bad = rows.find((r) => r.includes('0130041Z'))!
    expect(bad).toContain('Lycée &lt;B&gt;')
    expect(bad).toContain('\\| pipe')
    expect(bad).not.toContain('\n')
    // every row has as many cells as the header
    const cells = (l: string) => l.replace(/\\\|/g, '').split('|').length
    for (const r of rows) expect(cells(r)).toBe(cells(lines.find((l) => l.startsWith('| | UAI'))!))
  })
})

describe('writeReports', () => {
  it('writes each format to its file (folders created), nothing else left behind', async () => {
    const suite: ReportSuite = rolloutSuite('x', rollout(), new Date())
    const dir = join(tmp, 'out', 'deep')
    const files = await writeReports([{format: 'junit', file: join(dir, 'r.xml')}, {format: 'markdown', file: join(dir, 'r.md')}], suite)
    expect(files).toEqual([join(dir, 'r.xml'), join(dir, 'r.md')])
    expect((await readdir(dir)).sort()).toEqual(['r.md', 'r.xml'])
    expect(await readFile(join(dir, 'r.xml'), 'utf8')).toBe(renderJunit(suite))
    expect(await readFile(join(dir, 'r.md'), 'utf8')).toBe(renderMarkdown(suite))
  })
})

describe('--report', () => {
  it('joins `--report FORMAT FILE` into one value, leaves the rest alone', () => {
    expect(joinReportArgs(['2026.12.0', '--report', 'junit', 'out/r.xml', '--all', '--report=markdown', 'r.md', '0130040Y'])).toEqual(['2026.12.0', '--report=junit:out/r.xml', '--all', '--report=markdown:r.md', '0130040Y'])
    expect(joinReportArgs(['--report', 'junit:r.xml', '0130040Y'])).toEqual(['--report', 'junit:r.xml', '0130040Y'])
    expect(joinReportArgs(['--report', 'junit', '--all'])).toEqual(['--report', 'junit', '--all'])
    expect(joinReportArgs(['--', '--report', 'junit', 'x'])).toEqual(['--', '--report', 'junit', 'x'])
  })

  it('parses FORMAT:FILE and FORMAT=FILE; an unknown format or a missing file is a usage error naming the flag', () => {
    expect(parseReportTarget('junit:a.xml')).toEqual({format: 'junit', file: 'a.xml'})
    expect(parseReportTarget('markdown=c:/x.md')).toEqual({format: 'markdown', file: 'c:/x.md'})
    for (const bad of ['html:x', 'junit', 'junit:', 'xml']) {
      let err: unknown
      try {
        parseReportTarget(bad)
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(UsageError)
      expect((err as UsageError).where).toEqual({flag: 'report'})
    }
  })
})
