/**
 * src/bounded-read.ts: the reader for files a user names (inventory files, CA files, age
 * identities, handoffs). A FIFO, a device or a link loop is an answer, not a hang, a crash or a
 * buffer growing without end; a file that says it is empty (/proc) is read and still bounded.
 */
import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {readRegularFile, readRegularFileSync} from '../../src/bounded-read.js'
import {openHandoff} from '../../src/fleet/handoff.js'
import {readIdentityFile} from '../../src/secrets/identity.js'

const dir = mkdtempSync(join(tmpdir(), 'pgi-bounded-'))
afterAll(() => rmSync(dir, {recursive: true, force: true}))
const fifo = join(dir, 'fifo')
execFileSync('mkfifo', [fifo])
symlinkSync('loop', join(dir, 'loop'))
writeFileSync(join(dir, 'small'), 'hello\n')

describe.each([
  ['readRegularFile', (p: string, max: number) => readRegularFile(p, max, 'a test file')],
  ['readRegularFileSync', async (p: string, max: number) => readRegularFileSync(p, max, 'a test file')],
])('%s', (_name, read) => {
  it('reads a regular file', async () => {
    const r = await read(join(dir, 'small'), 100)
    expect(r.ok && r.data.toString()).toBe('hello\n')
  })

  it.each([
    [fifo, 'not-regular', /FIFO/],
    ['/dev/zero', 'not-regular', /character device/],
    [dir, 'not-regular', /folder/],
    [join(dir, 'loop'), 'unreadable', /loop of symbolic links/],
    [join(dir, 'missing'), 'missing', /does not exist/],
  ])('%s: %s', async (path, kind, message) => {
    const r = await read(path, 1024)
    expect(r.ok).toBe(false)
    if (!r.ok) {
      expect(r.problem.kind).toBe(kind)
      expect(r.problem.message).toMatch(message)
    }
  })

  it('says the limit when a file is over it', async () => {
    const r = await read(join(dir, 'small'), 3)
    expect(!r.ok && r.problem).toMatchObject({kind: 'too-large', message: 'is 6 bytes, more than 3 bytes, the limit for a test file'})
  })

  it('reads a file that says it is empty (/proc) and still stops at the limit', async () => {
    const r = await read('/proc/self/status', 1024 * 1024)
    expect(r.ok && r.data.toString()).toMatch(/^Name:/)
    const small = await read('/proc/self/status', 16)
    expect(!small.ok && small.problem.kind).toBe('too-large')
  })
})

describe('files named on the command line', () => {
  it('an age identity file that is a FIFO is an error, not a hang', async () => {
    await expect(readIdentityFile(fifo)).rejects.toThrow(/identity file is a FIFO/)
  })

  it('a handoff file that is /dev/zero is an error, not a growing buffer', async () => {
    await expect(openHandoff('/dev/zero', [])).rejects.toThrow(/handoff file is a character device/)
  })
})
