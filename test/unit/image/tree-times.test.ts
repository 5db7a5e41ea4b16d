import {lstat, lutimes, mkdir, mkdtemp, rm, symlink, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {pycSource, settleTreeTimes} from '../../../src/image/tree-times.js'

/** The image tree's times: byte code takes its source's, folders the newest of what they hold. */
describe('settleTreeTimes', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, {recursive: true, force: true})
  })
  const BUILD = 1_796_000_000
  const PKG = 1_700_000_000
  const mtime = async (p: string) => Math.floor((await lstat(p)).mtimeMs / 1000)

  it('names the source of byte-code files, and nothing else', () => {
    expect(pycSource('/usr/lib/python3/dist-packages/trytond/__pycache__/__init__.cpython-311.pyc')).toBe('/usr/lib/python3/dist-packages/trytond/__init__.py')
    expect(pycSource('/a/__pycache__/mod.cpython-313.opt-1.pyc')).toBe('/a/mod.py')
    expect(pycSource('/a/mod.pyc')).toBeUndefined()
    expect(pycSource('/a/__pycache__/notes.txt')).toBeUndefined()
  })

  it('gives byte code its source time and each folder the newest time below it; empty folders their parent', async () => {
    const root = await mkdtemp(join(tmpdir(), 'pgi-tree-times-'))
    dirs.push(root)
    const p = (...s: string[]) => join(root, ...s)
    await mkdir(p('usr', 'lib', 'm', '__pycache__'), {recursive: true})
    await mkdir(p('etc', 'empty', 'deeper'), {recursive: true})
    await mkdir(p('usr', 'share', 'doc'), {recursive: true})
    await writeFile(p('usr', 'lib', 'm', 'a.py'), 'x = 1\n')
    await writeFile(p('usr', 'lib', 'm', '__pycache__', 'a.cpython-311.pyc'), 'bytecode')
    await writeFile(p('usr', 'lib', 'm', '__pycache__', 'orphan.cpython-311.pyc'), 'bytecode')
    await writeFile(p('usr', 'share', 'doc', 'README'), 'r\n')
    await writeFile(p('etc', 'made-by-the-build'), 'b\n')
    await symlink('../usr/share/doc/README', p('etc', 'link'))
    // package files keep their times; the build's writes are clamped to its epoch
    await lutimes(p('usr', 'lib', 'm', 'a.py'), PKG, PKG)
    await lutimes(p('usr', 'share', 'doc', 'README'), PKG + 10, PKG + 10)
    for (const f of [p('usr', 'lib', 'm', '__pycache__', 'a.cpython-311.pyc'), p('usr', 'lib', 'm', '__pycache__', 'orphan.cpython-311.pyc'), p('etc', 'made-by-the-build'), p('etc', 'link')]) await lutimes(f, BUILD, BUILD)
    for (const d of [root, p('usr'), p('usr', 'lib'), p('usr', 'lib', 'm'), p('usr', 'lib', 'm', '__pycache__'), p('usr', 'share'), p('usr', 'share', 'doc'), p('etc'), p('etc', 'empty'), p('etc', 'empty', 'deeper')]) await lutimes(d, BUILD, BUILD)

    expect(await settleTreeTimes(root)).toEqual({pyc: 1, directories: 10})
    expect(await mtime(p('usr', 'lib', 'm', '__pycache__', 'a.cpython-311.pyc'))).toBe(PKG)
    // no source: the build's time stays
    expect(await mtime(p('usr', 'lib', 'm', '__pycache__', 'orphan.cpython-311.pyc'))).toBe(BUILD)
    expect(await mtime(p('usr', 'share', 'doc'))).toBe(PKG + 10)
    expect(await mtime(p('usr', 'share'))).toBe(PKG + 10)
    expect(await mtime(p('usr', 'lib', 'm'))).toBe(BUILD)
    expect(await mtime(p('etc'))).toBe(BUILD)
    expect(await mtime(p('etc', 'empty'))).toBe(BUILD)
    expect(await mtime(p('etc', 'empty', 'deeper'))).toBe(BUILD)
    expect(await mtime(root)).toBe(BUILD)
  })

  it('leaves a folder of unchanged package files at their time, whatever the build epoch', async () => {
    const times: number[] = []
    for (const build of [BUILD, BUILD + 86_400]) {
      const root = await mkdtemp(join(tmpdir(), 'pgi-tree-times-'))
      dirs.push(root)
      await mkdir(join(root, 'usr', 'share', 'zoneinfo', 'Europe'), {recursive: true})
      await writeFile(join(root, 'usr', 'share', 'zoneinfo', 'Europe', 'Paris'), 'tz')
      await lutimes(join(root, 'usr', 'share', 'zoneinfo', 'Europe', 'Paris'), PKG, PKG)
      for (const d of [join(root, 'usr', 'share', 'zoneinfo', 'Europe'), join(root, 'usr', 'share', 'zoneinfo')]) await lutimes(d, build, build)
      await settleTreeTimes(root)
      times.push(await mtime(join(root, 'usr', 'share', 'zoneinfo')))
    }
    expect(times).toEqual([PKG, PKG])
  })
})
