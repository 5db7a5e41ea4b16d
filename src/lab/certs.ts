import {X509Certificate} from 'node:crypto'
import {access, chmod, mkdir, readFile} from 'node:fs/promises'
import {join} from 'node:path'

import {run} from '../exec.js'

/**
 * A self-signed certificate per lab node, made with `openssl` through src/exec.ts (openssl is on
 * every Debian system and PVE itself makes its node certificates with it; an npm X.509 library
 * would be one more dependency for one command). ECDSA P-256, SAN IP:127.0.0.1 + DNS:localhost +
 * the node name, valid 2 years — the inventory pins its SHA-256 fingerprint.
 */
export interface NodeCert {
  key: string
  cert: string
  /** "AA:BB:…" (SHA-256 of the DER certificate, upper-case hex), as PVE shows it. */
  fingerprint: string
}

export async function ensureNodeCert(dir: string, node: string): Promise<NodeCert> {
  const keyFile = join(dir, 'pve-ssl.key')
  const certFile = join(dir, 'pve-ssl.pem')
  const exists = await access(certFile).then(() => true, () => false)
  if (!exists) {
    await mkdir(dir, {recursive: true, mode: 0o700})
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '730',
      '-subj', `/OU=PGI lab/O=PGI lab node/CN=${node}`,
      '-addext', `subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:${node}`,
    ])
    await chmod(keyFile, 0o600)
  }
  const cert = await readFile(certFile, 'utf8')
  return {key: await readFile(keyFile, 'utf8'), cert, fingerprint: new X509Certificate(cert).fingerprint256}
}
