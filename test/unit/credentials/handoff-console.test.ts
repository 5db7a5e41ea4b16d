/**
 * The handoff's console section: the console's address and the HTTPS certificate's SHA-256
 * fingerprint, read from the VM's pgi-tls record (/run/pgi/tls.json) through the guest agent,
 * kept in the store like the SSH host keys, and named in the letter and its data block. A VM
 * whose image has no HTTPS keeps the plain-HTTP web client and no console section.
 */
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {buildHandoff, fetchTlsFingerprint, handoffToJson, parseHandoff, readTlsFingerprint, refreshTlsFingerprint, renderHandoff} from '../../../src/fleet/handoff.js'
import {ensureEstablishmentSecrets} from '../../../src/fleet/secrets.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {establishment} from './fixtures.js'

const FP = 'AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89'
const R = 'age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p'

/** A hypervisor whose guest agent reads files from `files` (absent: "No such file", as qemu-guest-agent says). */
function apiWith(files: Record<string, string>): PveApi {
  return {
    agentFileRead: async (_n: string, _v: number, file: string) => {
      if (file in files) return files[file]!
      throw new Error(`Agent error: Failed to open file '${file}': No such file or directory`)
    },
  } as unknown as PveApi
}

let tmp: string
beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-handoff-console-'))
})
afterEach(async () => {
  await rm(tmp, {recursive: true, force: true})
})

describe('the certificate fingerprint, from the VM', () => {
  it("reads pgi-tls's record; none for an image without it; a damaged record is an error", async () => {
    expect(await fetchTlsFingerprint(apiWith({'/run/pgi/tls.json': JSON.stringify({sha256: FP.toLowerCase(), saved: true})}), 'pve1', 1001)).toBe(FP)
    expect(await fetchTlsFingerprint(apiWith({}), 'pve1', 1001)).toBeUndefined()
    await expect(fetchTlsFingerprint(apiWith({'/run/pgi/tls.json': '{"sha256": "SHA256:abc"}'}), 'pve1', 1001)).rejects.toThrow(/no SHA-256 fingerprint/)
    await expect(fetchTlsFingerprint(apiWith({'/run/pgi/tls.json': 'garbage'}), 'pve1', 1001)).rejects.toThrow(/not JSON/)
  })

  it('is recorded in the store when it changed, and a failure only warns', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env: {PGI_STATE_DIR: join(tmp, 'state')}})
    const est = establishment('0130040Y', R)
    const warnings: string[] = []
    const io = {warn: (m: string) => warnings.push(m)} as never
    expect(await refreshTlsFingerprint(apiWith({'/run/pgi/tls.json': JSON.stringify({sha256: FP})}), store, est, io)).toBe(FP)
    expect(await readTlsFingerprint(store, '0130040Y')).toBe(FP)
    expect(await refreshTlsFingerprint(apiWith({'/run/pgi/tls.json': '{}'}), store, est, io)).toBeUndefined()
    expect(warnings.join('\n')).toMatch(/could not read the VM's HTTPS certificate/)
    // the recorded one is kept
    expect(await readTlsFingerprint(store, '0130040Y')).toBe(FP)
  })
})

describe('the handoff names the console', () => {
  it('with a certificate: https web client, the console under it, the fingerprint in the letter and the data', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env: {PGI_STATE_DIR: join(tmp, 'state')}})
    const {secrets} = await ensureEstablishmentSecrets(store, '0130040Y')
    const est = establishment('0130040Y', R)
    const doc = buildHandoff(est, secrets, {tlsSha256: FP})
    expect(doc.webClient.url).toBe('https://192.0.2.101/')
    expect(doc.console).toEqual({url: 'https://192.0.2.101/console/', tlsSha256: FP})
    const text = renderHandoff(doc)
    expect(text).toContain('6. La console des enseignants')
    expect(text).toContain('Adresse               : https://192.0.2.101/console/')
    expect(text).toContain('https://192.0.2.101/console/ami/connexion (identifiant pgi_admin')
    expect(text).toContain(FP)
    expect(handoffToJson(parseHandoff(text)).console).toEqual({url: 'https://192.0.2.101/console/', tls_sha256: FP})
    // a lab: the console under the forwarded address
    const lab = buildHandoff(est, secrets, {tlsSha256: FP, connection: {host: '127.0.0.1', webUrl: 'https://127.0.0.1:40443/'}})
    expect(lab.console!.url).toBe('https://127.0.0.1:40443/console/')
  })

  it('without one (an image from before HTTPS): plain HTTP and no console section', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env: {PGI_STATE_DIR: join(tmp, 'state')}})
    const {secrets} = await ensureEstablishmentSecrets(store, '0130040Y')
    const doc = buildHandoff(establishment('0130040Y', R), secrets)
    expect(doc.webClient.url).toBe('http://192.0.2.101/')
    expect(doc.console).toBeUndefined()
    const text = renderHandoff(doc)
    expect(text).not.toContain('console des enseignants')
    expect(parseHandoff(text).console).toBeUndefined()
  })
})
