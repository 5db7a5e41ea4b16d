import {describe, expect, it} from 'vitest'

import {KeyedPool, settleAll} from '../../../src/fleet/pool.js'

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('KeyedPool', () => {
  it('never runs more than max jobs at once, nor more than perKey for one key', async () => {
    const pool = new KeyedPool({max: 4, perKey: 2})
    let now = 0
    let peak = 0
    const byKey = new Map<string, number>()
    const peakByKey = new Map<string, number>()
    const jobs = Array.from({length: 24}, (_, i) => {
      const key = `hv${i % 3}`
      return pool.run(key, async () => {
        now++
        byKey.set(key, (byKey.get(key) ?? 0) + 1)
        peak = Math.max(peak, now)
        peakByKey.set(key, Math.max(peakByKey.get(key) ?? 0, byKey.get(key)!))
        await tick(2)
        now--
        byKey.set(key, byKey.get(key)! - 1)
        return i
      })
    })
    const out = await Promise.all(jobs)
    expect(out).toEqual(Array.from({length: 24}, (_, i) => i))
    expect(peak).toBe(4)
    for (const v of peakByKey.values()) expect(v).toBe(2)
  })

  it('a slow key does not hold back other keys', async () => {
    const pool = new KeyedPool({max: 10, perKey: 1})
    const order: string[] = []
    const slow = pool.run('dead', () => tick(50).then(() => order.push('dead')))
    const fast = [1, 2, 3].map((i) => pool.run(`hv${i}`, async () => order.push(`hv${i}`)))
    await Promise.all(fast)
    expect(order).toEqual(['hv1', 'hv2', 'hv3'])
    await slow
  })

  it('rejects bad sizes', () => {
    expect(() => new KeyedPool({max: 0})).toThrow(RangeError)
    expect(() => new KeyedPool({max: 2, perKey: 0})).toThrow(RangeError)
  })

  it('settleAll reports failures per item without stopping the others', async () => {
    const r = await settleAll([1, 2, 3], () => 'k', async (n) => {
      if (n === 2) throw new Error('boom')
      return n * 10
    }, {max: 2})
    expect(r.map((x) => x.ok)).toEqual([true, false, true])
    expect(r[0]).toMatchObject({ok: true, value: 10})
  })
})
