/**
 * Which stale rollout locks a resume takes over at once (src/rollout/fleet-lock.ts
 * deadLocalRunnerOf): the lock of the same rollout left by a runner of this machine whose process
 * has ended — pgi killed with SIGKILL, then `pgi rollout resume` on the same machine. A live
 * process, another rollout or another machine's runner keep the lock until it expires.
 */
import {spawn, spawnSync} from 'node:child_process'
import {hostname} from 'node:os'

import {describe, expect, it} from 'vitest'

import {deadLocalRunnerOf} from '../../../src/rollout/fleet-lock.js'

const lock = (owner: string, rollout = 'R1') => ({rollout, owner, since: '2026-12-05T08:36:03.201Z', expires: '2099-01-01T00:00:00.000Z'})

/** A process id that was just used and has ended. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {encoding: 'utf8'})
  return Number(r.stdout)
}

describe('a stale rollout lock of this machine', () => {
  it('the same rollout, this host, a process that has ended: taken over', () => {
    expect(deadLocalRunnerOf(lock(`${hostname()}:${deadPid()}`), 'R1')).toBe(true)
  })

  it('a process still running, another rollout, another host, this very process, an owner of another form: kept', async () => {
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'])
    try {
      expect(deadLocalRunnerOf(lock(`${hostname()}:${child.pid}`), 'R1')).toBe(false)
    } finally {
      child.kill('SIGKILL')
    }
    const dead = deadPid()
    expect(deadLocalRunnerOf(lock(`${hostname()}:${dead}`, 'R2'), 'R1')).toBe(false)
    expect(deadLocalRunnerOf(lock(`another-runner:${dead}`), 'R1')).toBe(false)
    expect(deadLocalRunnerOf(lock(`${hostname()}:${process.pid}`), 'R1')).toBe(false)
    expect(deadLocalRunnerOf(lock('ci-a'), 'R1')).toBe(false)
  })
})
