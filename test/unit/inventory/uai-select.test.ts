import {describe, expect, it} from 'vitest'

import {UsageError} from '../../../src/errors.js'
import {UnknownEstablishmentError, UnknownGroupError} from '../../../src/inventory/errors.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import {listEstablishments, describeTarget} from '../../../src/inventory/report.js'
import {findHypervisor, selectEstablishments} from '../../../src/inventory/select.js'
import {isValidUai, uaiCheckLetter, uaiFromNumber, uaiProblem, UAI_LETTERS} from '../../../src/inventory/uai.js'
import {didYouMean} from '../../../src/inventory/suggest.js'

describe('UAI check letters', () => {
  it('0130040Y is valid (the reference example)', () => {
    expect(isValidUai('0130040Y')).toBe(true)
    expect(uaiCheckLetter('0130040')).toBe('Y')
  })

  it('computes the letter as ABCDEFGHJKLMNPRSTUVWXYZ[n mod 23]', () => {
    expect(UAI_LETTERS).toHaveLength(23)
    expect(UAI_LETTERS).not.toMatch(/[IOQ]/)
    expect(uaiCheckLetter('0000000')).toBe('A')
    expect(uaiCheckLetter('0000022')).toBe('Z')
    expect(uaiCheckLetter('0000023')).toBe('A')
    expect(uaiCheckLetter('0840004')).toBe(UAI_LETTERS[840004 % 23])
    for (const u of ['0130041Z', '0131549N', '0840004Y', '0840005Z']) expect(isValidUai(u)).toBe(true)
  })

  it('rejects wrong letters, lower case and wrong shapes', () => {
    expect(isValidUai('0130040X')).toBe(false)
    expect(isValidUai('0130040y')).toBe(false)
    expect(isValidUai('130040Y')).toBe(false)
    expect(isValidUai('0130040YY')).toBe(false)
    expect(uaiProblem('0130040X')).toEqual({kind: 'check-letter', expected: '0130040Y'})
    expect(uaiProblem('abc')).toEqual({kind: 'format'})
    expect(uaiProblem('0130040Y')).toBeUndefined()
    expect(() => uaiCheckLetter('123')).toThrow(RangeError)
  })

  it('uaiFromNumber generates valid, zero-padded UAIs', () => {
    expect(uaiFromNumber(130040)).toBe('0130040Y')
    expect(uaiFromNumber(0)).toBe('0000000A')
    expect(uaiFromNumber(9_999_999)).toMatch(/^9999999[A-Z]$/)
    for (let n = 0; n < 2000; n += 7) expect(isValidUai(uaiFromNumber(n))).toBe(true)
    expect(() => uaiFromNumber(10_000_000)).toThrow(RangeError)
    expect(() => uaiFromNumber(-1)).toThrow(RangeError)
    expect(() => uaiFromNumber(1.5)).toThrow(RangeError)
  })
})

describe('did you mean', () => {
  it('finds typos, transpositions and abbreviations, and nothing when far', () => {
    expect(didYouMean('netwrok', ['network', 'name'])).toBe('network')
    expect(didYouMean('rign', ['ring', 'name'])).toBe('ring')
    expect(didYouMean('tuesday', ['mon', 'tue', 'wed'])).toBe('tue')
    expect(didYouMean('hv-c', ['hv-a', 'hv-nord'])).toBe('hv-a')
    expect(didYouMean('zzzzzz', ['network', 'name'])).toBeUndefined()
    expect(didYouMean('x', [])).toBeUndefined()
  })
})

describe('selection', async () => {
  const inv = await loadValidInventory('inventory/example')

  it('selects by UAI (case-insensitive), in inventory order, each once', () => {
    expect(selectEstablishments(inv, {uais: ['0840004y', '0130040Y', '0130040Y']}).map((e) => e.uai)).toEqual(['0130040Y', '0840004Y'])
  })

  it('selects a group, and the union of a group and UAIs', () => {
    expect(selectEstablishments(inv, {group: 'vaucluse'}).map((e) => e.uai)).toEqual(['0840004Y', '0840005Z'])
    expect(selectEstablishments(inv, {group: 'vaucluse', uais: ['0130040Y']}).map((e) => e.uai)).toEqual(['0130040Y', '0840004Y', '0840005Z'])
  })

  it('selects everything only with all', () => {
    expect(selectEstablishments(inv, {all: true})).toHaveLength(5)
    expect(() => selectEstablishments(inv, {})).toThrow(UsageError)
    expect(() => selectEstablishments(inv, {uais: []})).toThrow(/no establishment selected/)
  })

  it('unknown UAI: typed error with the right check letter as suggestion', () => {
    const err = (() => {
      try {
        selectEstablishments(inv, {uais: ['0130040X']})
      } catch (e) {
        return e
      }
    })()
    expect(err).toBeInstanceOf(UnknownEstablishmentError)
    expect((err as UnknownEstablishmentError).code).toBe('PGI_UNKNOWN_ESTABLISHMENT')
    expect((err as UnknownEstablishmentError).suggestions[0]).toMatch(/0130040Y \(in the inventory\)/)
    expect(() => selectEstablishments(inv, {uais: ['0130040']})).toThrow(UnknownEstablishmentError)
    expect(() => selectEstablishments(inv, {uais: ['0999999A']})).toThrow(/no establishment with UAI 0999999A/)
  })

  it('unknown group: typed error with did-you-mean', () => {
    const err = (() => {
      try {
        selectEstablishments(inv, {group: 'vauclus'})
      } catch (e) {
        return e
      }
    })()
    expect(err).toBeInstanceOf(UnknownGroupError)
    expect((err as UnknownGroupError).suggestions[0]).toBe('did you mean "vaucluse"?')
  })

  it('unknown hypervisor: did-you-mean', () => {
    expect(() => findHypervisor(inv, 'hv-avigon')).toThrow(/no hypervisor named "hv-avigon"/)
  })

  it('list filters by group, ring and hypervisor', () => {
    expect(listEstablishments(inv, {ring: 'pilot'}).map((r) => r.uai)).toEqual(['0130041Z', '0840004Y'])
    expect(listEstablishments(inv, {group: 'bts-cg', hypervisor: 'hv-marseille'}).map((r) => r.uai)).toEqual(['0130040Y', '0131549N'])
    expect(() => listEstablishments(inv, {ring: 'pilote'})).toThrow(/no ring named "pilote"/)
    expect(() => listEstablishments(inv, {group: 'nope'})).toThrow(UnknownGroupError)
  })

  it('show gives where a secret comes from, never a value', () => {
    const hv = describeTarget(inv, 'hv-marseille', {PGI_TOKEN_HV_MARSEILLE: 'the-real-secret'})
    expect(hv.kind).toBe('hypervisor')
    expect(JSON.stringify(hv)).not.toContain('the-real-secret')
    expect(hv.kind === 'hypervisor' && hv.token.secret).toEqual({from: 'env', name: 'PGI_TOKEN_HV_MARSEILLE', set: true})
    const hv2 = describeTarget(inv, 'hv-avignon', {})
    expect(hv2.kind === 'hypervisor' && hv2.token.secret).toEqual({from: 'store', key: 'hypervisors/hv-avignon/token'})
    const e = describeTarget(inv, '0840005z')
    expect(e).toMatchObject({kind: 'establishment', uai: '0840005Z', node: 'pve-avi', source: 'inventory/example/establishments.yaml:49:5'})
    expect(() => describeTarget(inv, 'hv-nowhere')).toThrow(/no hypervisor named/)
    expect(() => describeTarget(inv, '0130040X')).toThrow(/no establishment with UAI/)
  })
})
