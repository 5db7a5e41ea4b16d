import {readFile, rename, writeFile} from 'node:fs/promises'
import {resolve} from 'node:path'

import {isMap, isScalar, parseDocument} from 'yaml'

import {MAX_CA_FILE_BYTES, readRegularFile} from '../bounded-read.js'
import {ErrorCode, UserError} from '../errors.js'
import type {Hypervisor} from '../inventory/types.js'
import {inspectCertificate, normalizeFingerprint, type CertificateInfo} from './tls.js'

/**
 * `pgi inventory trust`: show a hypervisor's certificate so the operator can compare it with the
 * one on the hypervisor's console (`pvenode cert info`), and write its fingerprint into the
 * inventory, changing nothing else in the file.
 */

export interface TrustReport {
  hypervisor: string
  url: string
  /** Where the hypervisor is defined. */
  definedAt: {file: string; line: number; column: number}
  certificate: CertificateInfo
  /** The pinned fingerprint in the inventory, if any. */
  pinned?: string
  caFile?: string
  /** true/false when a fingerprint is pinned; undefined when none is. */
  matches?: boolean
  /** Set when --write changed the file. */
  written?: {file: string; line: number; column: number; previous?: string; fingerprint: string}
}

export async function inspectHypervisor(hv: Hypervisor, opts: {timeoutMs?: number} = {}): Promise<TrustReport> {
  let ca: string | undefined
  if (hv.tls.caFile) {
    // bounded, regular files only: as the inventory checked it (src/bounded-read.ts)
    const r = await readRegularFile(hv.tls.caFile, MAX_CA_FILE_BYTES, 'a CA file')
    ca = r.ok ? r.data.toString('utf8') : undefined
  }
  const certificate = await inspectCertificate(hv.url, {timeoutMs: opts.timeoutMs, ca}).catch((err: unknown) => {
    if (err instanceof UserError) (err as {where?: unknown}).where ??= {hypervisor: hv.name}
    throw err
  })
  const pinned = hv.tls.fingerprint ? normalizeFingerprint(hv.tls.fingerprint) ?? hv.tls.fingerprint : undefined
  return {
    hypervisor: hv.name,
    url: hv.url,
    definedAt: {...hv.source},
    certificate,
    ...(pinned ? {pinned, matches: pinned === certificate.fingerprint256} : {}),
    ...(hv.tls.caFile ? {caFile: hv.tls.caFile} : {}),
  }
}

/**
 * Writes `fingerprint` as `hypervisors.<name>.tls.fingerprint` in the YAML file that defines the
 * hypervisor. When the key exists only its value is replaced, byte for byte in place (comments,
 * quoting and layout elsewhere untouched); otherwise it is added through the yaml Document API,
 * which keeps comments. The file is replaced atomically.
 */
export async function writeFingerprint(file: string, hypervisor: string, fingerprint: string): Promise<{file: string; line: number; column: number; previous?: string}> {
  const fp = normalizeFingerprint(fingerprint)
  if (!fp) throw new UserError(ErrorCode.USAGE, `"${fingerprint}" is not a SHA-256 fingerprint`)
  const abs = resolve(file)
  const text = await readFile(abs, 'utf8')
  const doc = parseDocument(text)
  if (doc.errors.length > 0) {
    throw new UserError(ErrorCode.INVENTORY_INVALID, `${file} has YAML errors: fix them first (pgi inventory validate)`, {where: {file}})
  }
  const hvNode = doc.getIn(['hypervisors', hypervisor], true)
  if (!isMap(hvNode)) {
    throw new UserError(ErrorCode.UNKNOWN_HYPERVISOR, `hypervisor "${hypervisor}" is not defined in ${file}`, {where: {file}})
  }
  const existing = doc.getIn(['hypervisors', hypervisor, 'tls', 'fingerprint'], true)
  let out: string
  let offset: number
  let previous: string | undefined
  if (isScalar(existing) && existing.range) {
    previous = String(existing.value)
    const [start, end] = existing.range
    out = text.slice(0, start) + `"${fp}"` + text.slice(end)
    offset = start
  } else {
    const tls = doc.getIn(['hypervisors', hypervisor, 'tls'], true)
    if (tls !== undefined && !isMap(tls)) {
      throw new UserError(ErrorCode.INVENTORY_INVALID, `hypervisors.${hypervisor}.tls in ${file} is not a mapping`, {where: {file}})
    }
    doc.setIn(['hypervisors', hypervisor, 'tls', 'fingerprint'], doc.createNode(fp))
    const fpNode = doc.getIn(['hypervisors', hypervisor, 'tls', 'fingerprint'], true)
    if (isScalar(fpNode)) fpNode.type = 'QUOTE_DOUBLE'
    out = doc.toString({lineWidth: 0})
    offset = out.indexOf(fp)
  }
  const tmp = `${abs}.pgi-trust-${process.pid}.tmp`
  await writeFile(tmp, out, 'utf8')
  await rename(tmp, abs)
  const pos = linePos(out, offset)
  return {file, ...pos, ...(previous !== undefined ? {previous} : {})}
}

function linePos(text: string, offset: number): {line: number; column: number} {
  const before = text.slice(0, Math.max(0, offset))
  const line = before.split('\n').length
  const column = offset - before.lastIndexOf('\n')
  return {line, column}
}
