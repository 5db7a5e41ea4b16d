import {readFileSync} from 'node:fs'

import {describe, expect, it} from 'vitest'

import {SourceFile, type YamlPath} from '../../../src/inventory/source.js'
import {AGE1, FP} from './helpers.js'

/** Every path of a plain JS value. */
function paths(v: unknown, base: (string | number)[] = [], out: YamlPath[] = []): YamlPath[] {
  out.push(base)
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...base, i], out))
  else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) paths(x, [...base, k], out)
  return out
}

const tricky = `# yaml-language-server: $schema=../schema.json
defaults: &d
  network: {dns: [192.0.2.53, "192.0.2.54"]}   # a comment
  maintenance_window:
    days: [wed,sat]
    start: '12:00'
hypervisors:
  hv-a:
    url: https://192.0.2.10:8006
    nodes:
      - pve1
      - pve2
    tls: {fingerprint: "${FP}"}
    token: {id: pgi@pve!deploy, secret: {env: T}}
establishments:
  - {uai: 0130040Y, name: "A, b", vmid: 1001}
  - uai: 0130040
    name: >-
      Lycée
      folded
    network:
      address: 192.0.2.101/24
    ami: {name: J, age_recipient: ${AGE1}}
    empty:
  - ? uai
    : 0840004Y
`

describe('positions: the fast reader (js-yaml) and the exact one (yaml) agree', () => {
  const files = [
    ...['region.yaml', 'hypervisors.yaml', 'establishments.yaml'].map((f) => [f, readFileSync(`inventory/example/${f}`, 'utf8')] as const),
    ['tricky.yaml', tricky] as const,
  ]
  it.each(files)('%s', async (name, text) => {
    const fast = await SourceFile.parse(name, text)
    const exact = await SourceFile.parse(name, text, name, {reader: 'exact'})
    expect(fast.errors).toEqual([])
    expect(fast.value).toEqual(exact.value)
    const all = paths(exact.value)
    expect(all.length).toBeGreaterThan(10)
    for (const p of all) {
      expect(fast.pos(p, 'value'), `value of ${p.join('.')}`).toEqual(exact.pos(p, 'value'))
      expect(fast.pos(p, 'key'), `key of ${p.join('.')}`).toEqual(exact.pos(p, 'key'))
    }
  })

  it('keeps the source text of a UAI that YAML read as a number', async () => {
    const src = await SourceFile.parse('t.yaml', tricky)
    expect((src.value as {establishments: {uai: unknown}[]}).establishments[1]!.uai).toBe(130040)
    expect(src.sourceText(['establishments', 1, 'uai'])).toBe('0130040')
    expect(src.pos(['establishments', 1, 'uai'])).toEqual({line: 17, column: 10})
    expect(src.pos(['establishments', 1, 'uai'], 'key')).toEqual({line: 17, column: 5})
    // a missing path points at its nearest ancestor
    expect(src.pos(['establishments', 1, 'network', 'gateway'])).toEqual({line: 22, column: 7})
  })

  it('falls back to the exact reader on errors, listing each with its position', async () => {
    const src = await SourceFile.parse('t.yaml', 'a: 1\nb: [1, 2\nc: 3\na: 4\n')
    expect(src.readable).toBe(false)
    expect(src.errors.length).toBeGreaterThan(0)
    const dup = await SourceFile.parse('t.yaml', 'a: 1\nb: 2\na: 3\n')
    expect(dup.readable).toBe(true)
    expect(dup.errors.map((e) => e.code)).toEqual(['DUPLICATE_KEY'])
    expect(dup.linePos(dup.errors[0]!.offset)).toEqual({line: 3, column: 1})
    expect(dup.value).toMatchObject({b: 2}) // the rest of the file is still checked
  })

  it('refuses alias bombs (billion laughs) with a problem instead of hanging', async () => {
    let text = 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n'
    for (let i = 1; i < 10; i++) text += `a${i}: &a${i} [${Array.from({length: 10}, () => `*a${i - 1}`).join(', ')}]\n`
    const src = await SourceFile.parse('bomb.yaml', text)
    expect(src.readable).toBe(false)
    expect(src.errors.map((e) => e.code)).toEqual(['ALIAS_COUNT'])
    expect(src.errors[0]!.message).toMatch(/alias/i)
  })
})
