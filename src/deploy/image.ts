/**
 * The image a deploy stages: found in the local images folder, its signed manifest and disk
 * checked (signature by a trusted key, size, sha256) BEFORE anything is sent to a hypervisor.
 */
import {join} from 'node:path'

import {imageDir} from '../image/build.js'
import {loadTrustedKeys, verifyManifestAndDisk} from '../image/manifest.js'
import type {Io} from '../io.js'
import type {DeployImage} from './desired.js'

export const DEFAULT_IMAGE_NAME = 'pgi-tryton'

/** Verifies image `version` in `imagesDir` and describes it for staging (the file name on the import storage). */
export async function resolveDeployImage(version: string, opts: {imagesDir: string; name?: string; io?: Io}): Promise<DeployImage> {
  const name = opts.name ?? DEFAULT_IMAGE_NAME
  const dir = imageDir(opts.imagesDir, name, version)
  const trusted = await loadTrustedKeys(opts.imagesDir)
  const m = await verifyManifestAndDisk({
    what: `${name} ${version}`,
    manifestPath: join(dir, 'manifest.json'),
    signaturePath: join(dir, 'manifest.sig'),
    diskDir: dir,
    trusted,
  })
  opts.io?.debug(`image ${name} ${version} verified`, {sha256: m.disk.sha256, key: m.signing.key_id})
  return {
    name: m.name,
    version: m.version,
    // PVE's import content wants a plain file name ending in .qcow2; the version keeps nodes' copies apart
    file: `${m.name}-${m.version}.qcow2`.replace(/[^\w.+-]/g, '_'),
    path: join(dir, m.disk.file),
    sha256: m.disk.sha256,
    size: m.disk.size_bytes,
  }
}
