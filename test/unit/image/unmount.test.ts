import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {run} from '../../../src/exec.js'
import {unmountUnder} from '../../../src/image/build.js'
import {MemoryIo} from '../../../src/io.js'

/**
 * The build's last line of defence before `rm -rf` of its work folder: whatever an interrupted
 * mmdebstrap left mounted under it (a bind mount of the apt cache, proc, a tmpfs) is unmounted
 * first, so nothing outside the work folder is ever deleted through a mount. Needs root (mount).
 */
describe.skipIf(process.getuid?.() !== 0)('unmountUnder', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, {recursive: true, force: true})
  })

  it('unmounts nested bind and tmpfs mounts, deepest first, and the files behind a bind mount survive', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pgi-unmount-'))
    dirs.push(base)
    const outside = join(base, 'apt-cache')
    const work = join(base, 'work')
    await mkdir(outside, {recursive: true})
    await writeFile(join(outside, 'precious.deb'), 'x')
    const archives = join(work, 'root', 'var', 'cache', 'apt', 'archives')
    const shm = join(work, 'root', 'dev shm') // a space: mountinfo escapes it as \040
    await mkdir(archives, {recursive: true})
    await mkdir(shm, {recursive: true})
    await run('mount', ['--bind', outside, archives])
    await run('mount', ['-t', 'tmpfs', 'tmpfs', shm])
    await mkdir(join(shm, 'inner'))
    await run('mount', ['-t', 'tmpfs', 'tmpfs', join(shm, 'inner')])

    const left = await unmountUnder(work, new MemoryIo())
    expect(left).toEqual([])
    expect((await run('mountpoint', ['-q', archives], {allowFailure: true})).exitCode).not.toBe(0)
    await rm(work, {recursive: true, force: true})
    expect(existsSync(join(outside, 'precious.deb'))).toBe(true)
  })

  it('returns nothing for a folder with no mount under it', async () => {
    const base = await mkdtemp(join(tmpdir(), 'pgi-unmount-'))
    dirs.push(base)
    expect(await unmountUnder(base, new MemoryIo())).toEqual([])
  })
})
