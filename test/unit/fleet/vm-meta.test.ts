import {describe, expect, it} from 'vitest'

import {formatDescription, formatTags, imageFromTags, parseDescription, type VmMeta} from '../../../src/fleet/vm-meta.js'

const meta: VmMeta = {v: 1, uai: '0130040Y', image: '2026.11.0', deployedAt: '2026-11-22T06:00:00Z', by: 'pgi/0.1.0'}

describe('vm-meta', () => {
  it('round-trips through the description', () => {
    const d = formatDescription(meta, 'Lycée Georges Colomb')
    expect(d).toContain('UAI 0130040Y')
    expect(parseDescription(d)).toEqual(meta)
  })

  it('ignores descriptions not written by pgi or corrupted', () => {
    expect(parseDescription(undefined)).toBeUndefined()
    expect(parseDescription('hand-made VM')).toBeUndefined()
    expect(parseDescription('x\npgi-meta: {not json')).toBeUndefined()
    expect(parseDescription('pgi-meta: {"v":2,"uai":"x","image":"y"}')).toBeUndefined()
  })

  it('writes PVE-valid, sorted, lower-case tags and reads the image back', () => {
    const t = formatTags(meta, 'canary')
    expect(t).toBe('img-2026.11.0;pgi;ring-canary;uai-0130040y')
    for (const tag of t.split(';')) expect(tag).toMatch(/^[a-z0-9_][a-z0-9_\-+.]*$/)
    expect(imageFromTags(t)).toBe('2026.11.0')
    expect(imageFromTags('pgi')).toBeUndefined()
  })

  it('refuses a description over the PVE limit', () => {
    expect(() => formatDescription(meta, 'x'.repeat(9000))).toThrow(RangeError)
  })
})
