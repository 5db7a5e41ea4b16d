/**
 * The one report writer of pgi: a ReportSuite (src/report/types.ts) as JUnit XML or Markdown,
 * written atomically (a CI job that is killed leaves the old file or the new one, never half).
 *
 * JUnit XML is written here, not with an XML library: the format is five elements with escaped
 * attributes and text, and the only subtle part — characters XML 1.0 cannot hold at all
 * (control characters from a guest's output) — is one regular expression. The output is checked
 * in the tests against test/fixtures/junit/junit.xsd with xmllint.
 */
import {mkdir} from 'node:fs/promises'
import {dirname, resolve} from 'node:path'

import {writeFileAtomic} from '../secrets/atomic.js'
import type {ReportCase, ReportSuite, ReportTarget} from './types.js'

/** Characters XML 1.0 cannot represent, even escaped (C0 controls but tab/LF/CR, lone surrogates, U+FFFE/FFFF). */
// eslint-disable-next-line no-control-regex
const NOT_XML = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g

function xmlText(s: string): string {
  return s.replace(NOT_XML, '\uFFFD').replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

function xmlAttr(s: string): string {
  return xmlText(s).replace(/"/g, '&quot;').replace(/\n/g, '&#10;').replace(/\r/g, '&#13;').replace(/\t/g, '&#9;')
}

const seconds = (ms: number | undefined) => ((ms ?? 0) / 1000).toFixed(3)

function junitCase(c: ReportCase): string {
  const head = `    <testcase classname="${xmlAttr(c.classname)}" name="${xmlAttr(c.name)}" time="${seconds(c.durationMs)}"`
  const body = [c.message, c.detail].filter(Boolean).join('\n')
  const out = `<system-out>${xmlText(body)}</system-out>`
  switch (c.status) {
    case 'passed':
      return `${head}>\n      ${out}\n    </testcase>`
    case 'skipped':
      return `${head}>\n      <skipped message="${xmlAttr(c.message)}"/>\n      ${out}\n    </testcase>`
    case 'failed':
    case 'error': {
      const el = c.status === 'failed' ? 'failure' : 'error'
      return `${head}>\n      <${el} type="${xmlAttr(c.kind)}" message="${xmlAttr(c.message)}">${xmlText(body)}</${el}>\n    </testcase>`
    }
  }
}

/** The suite as a JUnit XML document (`<testsuites>` holding one `<testsuite>`). */
export function renderJunit(s: ReportSuite): string {
  const count = (st: ReportCase['status']) => s.cases.filter((c) => c.status === st).length
  const [failures, errors, skipped] = [count('failed'), count('error'), count('skipped')]
  const counts = `tests="${s.cases.length}" failures="${failures}" errors="${errors}"`
  const props = Object.entries({...s.properties, 'exit-code': String(s.exitCode)})
    .map(([k, v]) => `      <property name="${xmlAttr(k)}" value="${xmlAttr(v)}"/>`)
    .join('\n')
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="${xmlAttr(s.name)}" ${counts} time="${seconds(s.durationMs)}">`,
    `  <testsuite name="${xmlAttr(s.name)}" ${counts} skipped="${skipped}" timestamp="${xmlAttr(s.timestamp.replace(/\.\d+Z$/, 'Z'))}" time="${seconds(s.durationMs)}">`,
    '    <properties>',
    props,
    '    </properties>',
    ...s.cases.map(junitCase),
    `    <system-out>${xmlText(s.summary)}</system-out>`,
    '  </testsuite>',
    '</testsuites>',
    '',
  ].join('\n')
}

/** A Markdown table cell: one line, pipes escaped, nothing that opens HTML. */
function cell(s: string): string {
  return s.replace(/\r\n|[\r\n\t]/g, ' ').replace(NOT_XML, '\uFFFD').replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

const MARK: Record<ReportCase['status'], string> = {passed: '✅', failed: '❌', error: '⛔', skipped: '⏭️'}

/** The suite as Markdown, fit for a merge-request comment or a job summary: verdict, counts, then one row per case (failures first). */
export function renderMarkdown(s: ReportSuite): string {
  const order: ReportCase['status'][] = ['error', 'failed', 'skipped', 'passed']
  const cases = [...s.cases].sort((a, b) => order.indexOf(a.status) - order.indexOf(b.status))
  const counts = order.map((st) => [st, s.cases.filter((c) => c.status === st).length] as const).filter(([, n]) => n > 0)
  const cols = cases.length > 0 ? Object.keys(cases[0]!.columns) : []
  const lines = [
    `### ${s.exitCode === 0 ? '✅' : '❌'} \`${cell(s.name)}\` — exit ${s.exitCode}`,
    '',
    s.summary.replace(NOT_XML, '\uFFFD'),
    '',
    counts.map(([st, n]) => `${MARK[st]} ${n} ${st}`).join(' · ') || 'nothing to report',
    '',
  ]
  if (cols.length > 0) {
    lines.push(`| | ${cols.map(cell).join(' | ')} |`, `|---|${cols.map(() => '---').join('|')}|`)
    for (const c of cases) lines.push(`| ${MARK[c.status]} | ${cols.map((k) => cell(c.columns[k] ?? '')).join(' | ')} |`)
    lines.push('')
  }
  const props = Object.entries(s.properties)
  if (props.length > 0) lines.push(`<sub>${props.map(([k, v]) => `${cell(k)}: ${cell(v)}`).join(' · ')} · ${s.timestamp}</sub>`, '')
  return lines.join('\n')
}

/** Writes the suite to every target (its folder created), each atomically. Returns the absolute paths written. */
export async function writeReports(targets: readonly ReportTarget[], suite: ReportSuite): Promise<string[]> {
  const written: string[] = []
  for (const t of targets) {
    const file = resolve(t.file)
    await mkdir(dirname(file), {recursive: true})
    await writeFileAtomic(file, t.format === 'junit' ? renderJunit(suite) : renderMarkdown(suite), {mode: 0o644})
    written.push(file)
  }
  return written
}
