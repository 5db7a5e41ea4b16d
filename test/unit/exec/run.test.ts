import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {ErrorCode, PgiError} from '../../../src/errors.js'
import {run} from '../../../src/exec.js'

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('run: interruption', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, {recursive: true, force: true})
  })

  it('with processGroup, an abort stops the tool and the children that outlive it, and says "interrupted" (exit 130)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pgi-run-'))
    dirs.push(dir)
    const pidFile = join(dir, 'child.pid')
    // the shell ignores SIGTERM (as mmdebstrap "waits for setup"); its child keeps stdout open
    const script = `trap '' TERM; sleep 60 & echo $! > ${pidFile}; wait`
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 300)
    const t0 = Date.now()
    const err = await run('sh', ['-c', script], {signal: ac.signal, processGroup: true, killGraceMs: 1000}).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(PgiError)
    expect((err as PgiError).code).toBe(ErrorCode.INTERRUPTED)
    expect((err as PgiError).exitCode).toBe(130)
    expect(Date.now() - t0).toBeLessThan(10_000)
    const child = Number((await readFile(pidFile, 'utf8')).trim())
    // killed; give init a moment to reap the orphan
    for (let i = 0; i < 40 && alive(child); i++) await new Promise((r) => setTimeout(r, 50))
    expect(alive(child)).toBe(false)
  })

  it('without an abort, a tool in its own process group runs to the end', async () => {
    const r = await run('sh', ['-c', 'echo ok'], {signal: new AbortController().signal, processGroup: true})
    expect(r.stdout).toBe('ok')
  })
})
