/**
 * What the staging tests on a simulated rollout lab write alike: the lab's inventory as YAML (its
 * hypervisors with the token from the environment, its establishments) and a version's signed
 * delivery.json in a store folder, as `pgi image publish` writes it.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {stringify} from 'yaml'

import {exportTrustedKey, generateSigningKey, keyId, publicKeyOf, signBytes} from '../../../src/image/manifest.js'
import {CHUNK_SIZE, type DeliveryManifest} from '../../../src/image/publish.js'
import type {Secret} from '../../../src/secret.js'
import {TOKEN_ENV, TOKEN_ID} from '../deploy/sim-lab.js'
import type {RolloutLab} from './lab.js'

/** The lab's inventory, with `extra` top-level sections (e.g. `delivery`). */
export function labInventoryYaml(lab: RolloutLab, extra: Record<string, unknown> = {}): string {
  const hypervisors: Record<string, unknown> = {}
  for (const [name, hv] of lab.inventory.hypervisors) {
    hypervisors[name] = {url: hv.url, nodes: hv.nodes, pve_version: '9.1', tls: {fingerprint: hv.tls.fingerprint}, token: {id: TOKEN_ID, secret: {env: TOKEN_ENV}}, storage: {os: hv.storage.os, data: hv.storage.data, import: hv.storage.import}, bridge: hv.bridge}
  }
  const establishments = lab.inventory.establishments.map((e) => ({
    uai: e.uai,
    name: e.name,
    academie: e.academie,
    hypervisor: e.hypervisor,
    node: e.node,
    vmid: e.vmid,
    ring: e.ring,
    network: {address: e.network.address, gateway: e.network.gateway, dns: e.network.dns, searchdomain: e.network.searchdomain},
    data_disk_gb: e.dataDiskGb,
    os_disk_gb: e.osDiskGb,
    ami: {name: e.ami.name, age_recipient: e.ami.ageRecipient},
  }))
  return stringify({rings: ['canary', 'pilot', 'general'], hypervisors, establishments, ...extra}, {lineWidth: 0})
}

/**
 * A version's delivery.json and signature in the store folder `dir`, signed by `key`, which the
 * images folder trusts. The raw digest is the local image's (the store must hold the same version's
 * bits) when `images` has that version's manifest, else any. `extra` adds or replaces fields
 * (e.g. `patches`).
 */
export async function publishTestDelivery(dir: string, images: string, version: string, key: Secret = generateSigningKey(), extra: Partial<DeliveryManifest> = {}): Promise<DeliveryManifest> {
  let raw = randomBytes(32).toString('hex')
  try {
    raw = (JSON.parse(await readFile(join(images, 'pgi-tryton', version, 'manifest.json'), 'utf8')) as {disk: {raw_sha256: string}}).disk.raw_sha256
  } catch {
    // a lab image (service tests): no local manifest
  }
  await exportTrustedKey(images, publicKeyOf(key))
  const d: DeliveryManifest = {
    format: 1,
    name: 'pgi-tryton',
    version,
    image_manifest_sha256: randomBytes(32).toString('hex'),
    engine: {tool: 'casync', digest: 'sha512-256', compression: 'zstd', chunk_size: CHUNK_SIZE},
    store: 'default.castr',
    index: {file: 'disk.caibx', sha256: randomBytes(32).toString('hex'), size_bytes: 700_000},
    raw: {sha256: raw, size_bytes: 3 * 2 ** 30},
    chunks: {count: 10, distinct: 10, stored_bytes: 1_000_000},
    signing: {algorithm: 'ed25519', key_id: keyId(publicKeyOf(key))},
    ...extra,
  }
  const bytes = Buffer.from(JSON.stringify(d, null, 2) + '\n')
  await mkdir(join(dir, 'pgi-tryton', version), {recursive: true})
  await writeFile(join(dir, 'pgi-tryton', version, 'delivery.json'), bytes)
  await writeFile(join(dir, 'pgi-tryton', version, 'delivery.sig'), signBytes(bytes, key))
  return d
}
