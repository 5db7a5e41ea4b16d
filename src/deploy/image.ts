/**
 * The image a deploy stages: src/image's `verifyImage` (signature by a trusted key, size, sha256)
 * runs BEFORE anything is sent to a hypervisor; this turns its answer into what staging needs.
 */
import {trytonSeriesOf} from '../image/boottest.js'
import {DEFAULT_IMAGE, listImages, verifyImage, type ImageRef} from '../image/images.js'
import type {Io} from '../io.js'
import type {DeployImage} from './desired.js'

/** Verifies image `ref` (parsed once, at the command line) in `imagesDir` and describes it for staging. */
export async function resolveDeployImage(ref: ImageRef, opts: {imagesDir: string; io?: Io}): Promise<DeployImage> {
  const {manifest: m, diskPath} = await verifyImage(ref, {root: opts.imagesDir})
  opts.io?.debug(`image ${m.name} ${m.version} verified`, {sha256: m.disk.sha256, key: m.signing.key_id})
  return {
    name: m.name,
    version: m.version,
    // PVE's import content wants a plain file name ending in .qcow2; name + version keep versions apart on a node
    file: `${m.name}-${m.version}.qcow2`.replace(/[^\w.+-]/g, '_'),
    path: diskPath,
    sha256: m.disk.sha256,
    size: m.disk.size_bytes,
    ...(m.disk.raw_sha256 ? {rawSha256: m.disk.raw_sha256} : {}),
    stack: {postgresql: postgresqlMajorOf(m), tryton: trytonSeriesOf(m)},
  }
}

/** The PostgreSQL major version of an image ("17"), from its postgresql-NN server package. */
export function postgresqlMajorOf(manifest: {packages: {name: string}[]}): string | undefined {
  const v = manifest.packages.map((p) => /^postgresql-(\d+)$/.exec(p.name)?.[1]).filter(Boolean)
  return v.sort((a, b) => Number(b) - Number(a))[0]
}

/** The newest built version of the reference image (for inventories that name none and no --image); undefined when none is built. */
export async function newestImage(imagesDir: string): Promise<ImageRef | undefined> {
  const all = await listImages({root: imagesDir})
  const newest = all.filter((i) => i.name === DEFAULT_IMAGE).slice(-1)[0]
  return newest ? {name: newest.name, version: newest.version} : undefined
}
