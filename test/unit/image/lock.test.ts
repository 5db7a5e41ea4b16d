import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {aptPreferences, formatLock, lockDrift, parseDpkgList, parseLock, readLock, requestDigest, writeLock, type ImageLock} from '../../../src/image/lock.js'
import {parseRecipe} from '../../../src/image/recipe.js'

const recipe = parseRecipe('name: demo\nversion: 0.1.0\nsuite: bookworm\nkernel: {package: linux-image-cloud-amd64}\npackages: [openssh-server, sudo]\n', '/x/image.yaml')

function lockOf(pkgs: Record<string, string>): ImageLock {
  return {suite: 'bookworm', architecture: 'amd64', request: requestDigest(recipe), packages: new Map(Object.entries(pkgs))}
}

describe('image.lock', () => {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, {recursive: true, force: true})
  })

  it('round-trips through its text format, sorted', async () => {
    const d = await mkdtemp(join(tmpdir(), 'pgi-lock-'))
    dirs.push(d)
    const lock = lockOf({sudo: '1.9.13p3-1+deb12u1', 'openssh-server': '1:9.2p1-2+deb12u5', 'libc6': '2.36-9+deb12u10'})
    await writeLock(join(d, 'image.lock'), lock, 'demo')
    const back = await readLock(join(d, 'image.lock'))
    expect(back).toEqual(lock)
    const text = formatLock(lock, 'demo')
    expect(text.split('\n').filter((l) => /^[a-z]/.test(l))).toEqual(['libc6 2.36-9+deb12u10', 'openssh-server 1:9.2p1-2+deb12u5', 'sudo 1.9.13p3-1+deb12u1'])
    expect(await readLock(join(d, 'missing.lock'))).toBeUndefined()
  })

  it('a lock is tied to the requested package list', () => {
    const other = parseRecipe('name: demo\nversion: 0.1.0\nsuite: bookworm\nkernel: {package: linux-image-cloud-amd64}\npackages: [sudo, openssh-server, nginx-light]\n', '/x/image.yaml')
    expect(requestDigest(other)).not.toBe(requestDigest(recipe))
    const reordered = parseRecipe('name: demo\nversion: 0.1.0\nsuite: bookworm\nkernel: {package: linux-image-cloud-amd64}\npackages: [sudo, openssh-server]\n', '/x/image.yaml')
    expect(requestDigest(reordered)).toBe(requestDigest(recipe))
  })

  it('refuses damaged locks with the line', () => {
    const good = formatLock(lockOf({sudo: '1.0'}), 'demo')
    expect(() => parseLock(good + 'sudo 2.0\n', 'image.lock')).toThrow(/image.lock:7: package sudo listed twice/)
    expect(() => parseLock(good + 'bad line here\n', 'image.lock')).toThrow(/image.lock:7/)
    expect(() => parseLock('sudo 1.0\n', 'image.lock')).toThrow(/incomplete lock/)
  })

  it('pins every package with apt preferences, and reports drift both ways', () => {
    const lock = lockOf({sudo: '1.0', 'openssh-server': '1:9.2'})
    const prefs = aptPreferences(lock)
    expect(prefs).toContain('Package: sudo\nPin: version 1.0\nPin-Priority: 1001')
    expect(prefs).toContain('Package: openssh-server\nPin: version 1:9.2\n')
    expect(lockDrift(lock, new Map([['sudo', '1.0'], ['openssh-server', '1:9.2']]))).toEqual([])
    expect(lockDrift(lock, new Map([['sudo', '1.1'], ['nano', '7']]))).toEqual([
      'sudo: locked 1.0, installed 1.1',
      'openssh-server 1:9.2: locked but not installed',
      'nano 7: installed but not in the lock',
    ])
  })

  it('reads dpkg-query output', () => {
    expect(parseDpkgList('sudo\t1.0\nlibc6\t2.36\n\n')).toEqual(new Map([['sudo', '1.0'], ['libc6', '2.36']]))
  })
})
