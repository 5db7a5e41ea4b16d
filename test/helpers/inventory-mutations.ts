/**
 * Random mutations of the example inventory, for property-based tests (fast-check): byte flips,
 * inserted and deleted bytes, deleted, duplicated and swapped lines, swapped values, values of
 * another type (including a secret in the wrong place), broken indentation, truncation. A mutant
 * is the example's files with 1–4 mutations applied. Positions are fractions of the file, so a
 * mutation applies to whatever the earlier ones left.
 */
import {readFileSync} from 'node:fs'
import {join} from 'node:path'

import fc from 'fast-check'

import {EXAMPLE, SECRET_UUID} from './bad-inventories.js'

export const FILES = ['establishments.yaml', 'hypervisors.yaml', 'region.yaml'] as const
export type Mutant = Record<(typeof FILES)[number], Buffer>

/** A secret put in random places by the mutations: no output may ever contain it. */
export const SECRET_MARK = `pgi@pve!deploy=${SECRET_UUID}`

const REPLACEMENTS = ['[]', '{}', '~', 'true', '-1', '0', '1e400', '"x"', "''", '!!binary aGVsbG8=', '*nope', '&a x', '"' + 'x'.repeat(300) + '"', SECRET_MARK, `"${SECRET_UUID}"`, '[1, [2, [3]]]', '{a: {b: c}}', '0130040', '12:30', '2026-01-01', 'null', '.inf', '0x1F', '"é\\u0000"']
const SPECIALS = [':', '-', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', "'", '"', '%', '@', '`', '\t', '\r', '\0', ',', '?', '\u00e9', '\ufeff']

export type Mutation =
  | {kind: 'flip'; file: number; at: number; xor: number}
  | {kind: 'insert'; file: number; at: number; text: string}
  | {kind: 'delete-bytes'; file: number; at: number; n: number}
  | {kind: 'delete-line' | 'duplicate-line' | 'indent' | 'dedent'; file: number; line: number}
  | {kind: 'swap-lines'; file: number; a: number; b: number}
  | {kind: 'swap-values'; file: number; a: number; b: number}
  | {kind: 'retype'; file: number; line: number; value: string}
  | {kind: 'truncate'; file: number; at: number}

const frac = fc.double({min: 0, max: 1, maxExcluded: true, noNaN: true})
const file = fc.integer({min: 0, max: FILES.length - 1})

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({kind: fc.constant('flip' as const), file, at: frac, xor: fc.integer({min: 1, max: 255})}),
  fc.record({kind: fc.constant('insert' as const), file, at: frac, text: fc.oneof(fc.constantFrom(...SPECIALS), fc.string({maxLength: 8}))}),
  fc.record({kind: fc.constant('delete-bytes' as const), file, at: frac, n: fc.integer({min: 1, max: 40})}),
  fc.record({kind: fc.constantFrom('delete-line' as const, 'duplicate-line' as const, 'indent' as const, 'dedent' as const), file, line: frac}),
  fc.record({kind: fc.constant('swap-lines' as const), file, a: frac, b: frac}),
  fc.record({kind: fc.constant('swap-values' as const), file, a: frac, b: frac}),
  fc.record({kind: fc.constant('retype' as const), file, line: frac, value: fc.constantFrom(...REPLACEMENTS)}),
  fc.record({kind: fc.constant('truncate' as const), file, at: frac}),
)

export const mutations = fc.array(mutation, {minLength: 1, maxLength: 4})

export function exampleFiles(): Mutant {
  return Object.fromEntries(FILES.map((f) => [f, readFileSync(join(EXAMPLE, f))])) as Mutant
}

const VALUE_LINE = /^(\s*(?:- )?[\w-]+:\s)(.+)$/

/** The example with the mutations applied, in order. */
export function mutate(ms: Mutation[]): Mutant {
  const out = exampleFiles()
  for (const m of ms) {
    const name = FILES[m.file]!
    const buf = out[name]
    const pos = (f: number) => Math.floor(f * buf.length)
    switch (m.kind) {
      case 'flip': {
        if (buf.length === 0) break
        const b = Buffer.from(buf)
        b[pos(m.at)]! ^= m.xor
        out[name] = b
        break
      }
      case 'insert':
        out[name] = Buffer.concat([buf.subarray(0, pos(m.at)), Buffer.from(m.text), buf.subarray(pos(m.at))])
        break
      case 'delete-bytes':
        out[name] = Buffer.concat([buf.subarray(0, pos(m.at)), buf.subarray(pos(m.at) + m.n)])
        break
      case 'truncate':
        out[name] = buf.subarray(0, pos(m.at))
        break
      default: {
        // line-level mutations work on the text as bytes read as latin1 (any bytes round-trip)
        const lines = buf.toString('latin1').split('\n')
        const li = (f: number) => Math.floor(f * lines.length)
        if (m.kind === 'delete-line') lines.splice(li(m.line), 1)
        else if (m.kind === 'duplicate-line') lines.splice(li(m.line), 0, lines[li(m.line)]!)
        else if (m.kind === 'indent') lines[li(m.line)] = '  ' + lines[li(m.line)]
        else if (m.kind === 'dedent') lines[li(m.line)] = lines[li(m.line)]!.replace(/^ {1,2}/, '')
        else if (m.kind === 'swap-lines') [lines[li(m.a)], lines[li(m.b)]] = [lines[li(m.b)]!, lines[li(m.a)]!]
        else if (m.kind === 'swap-values' || m.kind === 'retype') {
          const valueLines = lines.map((l, i) => (VALUE_LINE.test(l) ? i : -1)).filter((i) => i >= 0)
          if (valueLines.length === 0) break
          const pick = (f: number) => valueLines[Math.floor(f * valueLines.length)]!
          if (m.kind === 'retype') {
            const i = pick(m.line)
            lines[i] = lines[i]!.replace(VALUE_LINE, (_, k: string) => k + Buffer.from(m.value).toString('latin1'))
          } else {
            const [i, j] = [pick(m.a), pick(m.b)]
            const [, ki, vi] = VALUE_LINE.exec(lines[i]!)!
            const [, kj, vj] = VALUE_LINE.exec(lines[j]!)!
            lines[i] = ki! + vj!
            lines[j] = kj! + vi!
          }
        }
        out[name] = Buffer.from(lines.join('\n'), 'latin1')
      }
    }
  }
  return out
}
