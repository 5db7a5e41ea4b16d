import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {findImage, listImages, parseImageRef, verifyImage} from '../../../src/image/images.js'
import {
  exportTrustedKey,
  generateSigningKey,
  keyId,
  manifestBytes,
  publicKeyOf,
  sha256OfFile,
  signBytes,
  type ImageManifest,
} from '../../../src/image/manifest.js'
import type {Secret} from '../../../src/secret.js'

/** Publishes a small fake image (random bytes as the qcow2) signed with `key`, as build does. */
async function publish(root: string, key: Secret, name: string, version: string): Promise<string> {
  const dir = join(root, name, version)
  await mkdir(dir, {recursive: true})
  const disk = join(dir, `${name}-${version}.qcow2`)
  await writeFile(disk, Buffer.from(`disk of ${name} ${version} `.repeat(1000)))
  const m: ImageManifest = {
    format: 1,
    name,
    version,
    build_time: '2026-01-01T00:00:00Z',
    source_date_epoch: 1767225600,
    disk: {file: `${name}-${version}.qcow2`, format: 'qcow2', sha256: await sha256OfFile(disk), size_bytes: (await readFile(disk)).length, virtual_size_bytes: 3 << 30, raw_sha256: '0'.repeat(64)},
    kernel: {package: 'linux-image-cloud-amd64', release: '6.1.0-56-cloud-amd64', version: '6.1.192-2'},
    recipe: {name, digest: 'a'.repeat(64)},
    lock: {digest: 'b'.repeat(64), packages: 1},
    tree: {digest: 'c'.repeat(64), entries: 1},
    packages: [{name: 'sudo', version: '1.0'}],
    ports: {ssh: 22},
    signing: {algorithm: 'ed25519', key_id: keyId(publicKeyOf(key))},
  }
  const bytes = manifestBytes(m)
  await writeFile(join(dir, 'manifest.json'), bytes)
  await writeFile(join(dir, 'manifest.sig'), signBytes(bytes, key))
  return dir
}

describe('image manifests and signatures', () => {
  let root: string
  let key: Secret
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'pgi-images-'))
    key = generateSigningKey()
    await exportTrustedKey(root, publicKeyOf(key))
  })
  afterEach(async () => {
    await rm(root, {recursive: true, force: true})
  })

  it('the signing key is an Ed25519 PEM that never prints', () => {
    expect(key.reveal()).toMatch(/^-----BEGIN PRIVATE KEY-----/)
    expect(String(key)).toBe('[secret]')
    expect(keyId(publicKeyOf(key))).toMatch(/^[0-9a-f]{16}$/)
  })

  it('verifies an untouched image', async () => {
    await publish(root, key, 'pgi-tryton', '1.0.0')
    const {manifest, diskPath} = await verifyImage('1.0.0', {root})
    expect(manifest.version).toBe('1.0.0')
    expect(diskPath).toBe(join(root, 'pgi-tryton', '1.0.0', 'pgi-tryton-1.0.0.qcow2'))
  })

  it('refuses a modified disk image (same size, one byte changed)', async () => {
    const dir = await publish(root, key, 'pgi-tryton', '1.0.0')
    const disk = join(dir, 'pgi-tryton-1.0.0.qcow2')
    const b = await readFile(disk)
    b[100] ^= 1
    await writeFile(disk, b)
    await expect(verifyImage('1.0.0', {root})).rejects.toMatchObject({code: 'PGI_IMAGE_INVALID', exitCode: 7, message: expect.stringContaining('does not match the signed manifest')})
  })

  it('refuses a modified manifest (even one that matches the disk)', async () => {
    const dir = await publish(root, key, 'pgi-tryton', '1.0.0')
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as ImageManifest
    m.packages.push({name: 'backdoor', version: '1'})
    await writeFile(join(dir, 'manifest.json'), manifestBytes(m))
    await expect(verifyImage('1.0.0', {root})).rejects.toMatchObject({code: 'PGI_IMAGE_INVALID', message: expect.stringContaining('manifest was modified')})
  })

  it('refuses an image signed by a key that is not trusted, or with no signature', async () => {
    await publish(root, generateSigningKey(), 'pgi-tryton', '2.0.0')
    await expect(verifyImage('2.0.0', {root})).rejects.toMatchObject({code: 'PGI_IMAGE_INVALID', message: expect.stringContaining('not a trusted key')})
    const dir = await publish(root, key, 'pgi-tryton', '3.0.0')
    await rm(join(dir, 'manifest.sig'))
    await expect(verifyImage('3.0.0', {root})).rejects.toMatchObject({code: 'PGI_IMAGE_INVALID', message: expect.stringContaining('signature missing')})
  })

  it('refuses an image whose signed manifest names another version (copied to the wrong folder)', async () => {
    const dir = await publish(root, key, 'pgi-tryton', '1.0.0')
    await mkdir(join(root, 'pgi-tryton', '9.9.9'), {recursive: true})
    for (const f of ['manifest.json', 'manifest.sig', 'pgi-tryton-1.0.0.qcow2']) await writeFile(join(root, 'pgi-tryton', '9.9.9', f), await readFile(join(dir, f)))
    await expect(verifyImage('9.9.9', {root})).rejects.toMatchObject({code: 'PGI_IMAGE_INVALID', message: expect.stringContaining('says pgi-tryton 1.0.0')})
  })

  it('lists and finds images by version order, and explains a missing one', async () => {
    await publish(root, key, 'pgi-tryton', '1.10.0')
    await publish(root, key, 'pgi-tryton', '1.9.0')
    await publish(root, key, 'lab-test', '0.1.0')
    const all = await listImages({root})
    expect(all.map((i) => `${i.name}@${i.version}`)).toEqual(['lab-test@0.1.0', 'pgi-tryton@1.9.0', 'pgi-tryton@1.10.0'])
    expect((await findImage('lab-test@0.1.0', {root})).diskPath).toContain('lab-test-0.1.0.qcow2')
    await expect(findImage('4.0.0', {root})).rejects.toMatchObject({code: 'PGI_IMAGE_NOT_FOUND', message: expect.stringContaining('pgi-tryton 4.0.0')})
    // a version of a line with nothing built: the build command of that line, not line 1's
    await expect(findImage('2.0.0', {root})).rejects.toMatchObject({suggestions: expect.arrayContaining(['Build it first: `sudo pgi image build pgi-tryton@2.0.0`.'])})
    // a line ("pgi-tryton@2", as `pgi image build` takes it) is not a version: its versions are offered
    await publish(root, key, 'pgi-tryton', '2.0.0')
    const line = await findImage('pgi-tryton@2', {root}).catch((error: unknown) => error)
    expect(line).toMatchObject({code: 'PGI_IMAGE_NOT_FOUND', message: expect.stringContaining('2 names a line'), suggestions: expect.arrayContaining(['Versions of line 2: 2.0.0.'])})
    expect((line as {suggestions: string[]}).suggestions.join(' ')).not.toContain('image build')
    expect(parseImageRef('pgi-tryton/1.2.0')).toEqual({name: 'pgi-tryton', version: '1.2.0'})
    expect(() => parseImageRef('latest')).toThrow(/not an image version/)
  })
})
