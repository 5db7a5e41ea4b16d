/**
 * TLS against real HTTPS servers on 127.0.0.1, with certificates made by `openssl` for this test:
 * a self-signed node certificate (pinned by fingerprint), and a certificate signed by a test CA
 * (verified with ca_file), plus a second, unrelated CA.
 */
import {execFileSync} from 'node:child_process'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {createServer, type Server} from 'node:https'
import {createServer as createTcpServer} from 'node:net'
import {tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it, vi} from 'vitest'

import {rejection} from '../../helpers/rejection.js'

import {ErrorCode} from '../../../src/errors.js'
import {ExitCode} from '../../../src/exit-codes.js'
import type {Hypervisor} from '../../../src/inventory/types.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {createTrustedFetch, inspectCertificate, normalizeFingerprint} from '../../../src/proxmox/tls.js'
import {TOKEN_SECRET, upid} from './fake-pve.js'

let dir: string
const ossl = (...args: string[]): string => execFileSync('openssl', args, {cwd: dir, stdio: ['ignore', 'pipe', 'pipe']}).toString()

interface TestServer {
  server: Server
  port: number
  url: string
  /** TCP connections accepted. */
  handshakes: number
  requests: {method: string; url: string; headers: Record<string, string | string[] | undefined>; bodyLength: number; body: string}[]
}

async function startServer(keyFile: string, certFile: string): Promise<TestServer> {
  const s: TestServer = {server: undefined as never, port: 0, url: '', handshakes: 0, requests: []}
  s.server = createServer({key: await readFile(join(dir, keyFile)), cert: await readFile(join(dir, certFile))}, (req, res) => {
    let n = 0
    let head = ''
    req.on('data', (c: Buffer) => {
      n += c.length
      if (head.length < 4096) head += c.toString('latin1')
    })
    req.on('end', () => {
      s.requests.push({method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodyLength: n, body: head})
      const u = req.url ?? ''
      if (u.endsWith('/hang')) return // accepts the request, never answers
      if (u.includes('/qemu/404/')) {
        // PVE's answer for a VM that is not there: the message in the reason phrase
        res.writeHead(500, "Configuration file 'nodes/pve1/qemu-server/404.conf' does not exist", {'content-type': 'application/json;charset=UTF-8'})
        res.end(JSON.stringify({data: null}))
        return
      }
      let data: unknown = {version: '9.1.2', release: '9.1', repoid: 'f1e2d3c4'}
      if (u.includes('/upload')) data = upid('imgcopy', '')
      if (req.method === 'POST' && u.endsWith('/qemu')) data = upid('qmcreate', 100)
      if (u.includes('/tasks/')) data = {status: 'stopped', exitstatus: 'OK', type: 'imgcopy', upid: upid('imgcopy', ''), node: 'pve1', starttime: 1}
      res.writeHead(200, 'OK', {'content-type': 'application/json;charset=UTF-8'})
      res.end(JSON.stringify({data}))
    })
  })
  s.server.on('connection', () => s.handshakes++)
  await new Promise<void>((r) => s.server.listen(0, '127.0.0.1', r))
  s.port = (s.server.address() as {port: number}).port
  s.url = `https://127.0.0.1:${s.port}`
  return s
}

function fingerprintOf(certFile: string): string {
  const out = ossl('x509', '-in', certFile, '-noout', '-fingerprint', '-sha256')
  return out.trim().split('=')[1]
}

function hv(url: string, tls: Hypervisor['tls']): Hypervisor {
  return {
    name: 'hv-tls',
    url,
    nodes: ['pve1'],
    tls,
    token: {id: 'pgi@pve!deploy', secret: {env: 'X'}},
    storage: {os: 'local-lvm', data: 'local-lvm', import: 'local'},
    bridge: 'vmbr0',
    source: {file: join(dir, 'hypervisors.yaml'), line: 1, column: 1},
  }
}

let selfSigned: TestServer
let caSigned: TestServer
let wrongName: TestServer

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgi-tls-'))
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  // self-signed node certificate, as a fresh PVE node has
  ossl('req', '-x509', ...ec, '-keyout', 'node.key', '-out', 'node.pem', '-days', '2', '-subj', '/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN=pve1.lab', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:pve1.lab')
  // two CAs, and server certificates signed by the first
  ossl('req', '-x509', ...ec, '-keyout', 'ca1.key', '-out', 'ca1.pem', '-days', '2', '-subj', '/CN=Test Region CA 1')
  ossl('req', '-x509', ...ec, '-keyout', 'ca2.key', '-out', 'ca2.pem', '-days', '2', '-subj', '/CN=Other CA 2')
  await writeFile(join(dir, 'ip.ext'), 'subjectAltName=IP:127.0.0.1\n')
  await writeFile(join(dir, 'name.ext'), 'subjectAltName=DNS:other.example\n')
  for (const [name, ext] of [['srv', 'ip.ext'], ['badname', 'name.ext']]) {
    ossl('req', '-new', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`)
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca1.pem', '-CAkey', 'ca1.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', ext)
  }
  selfSigned = await startServer('node.key', 'node.pem')
  caSigned = await startServer('srv.key', 'srv.pem')
  wrongName = await startServer('badname.key', 'badname.pem')
}, 60_000)

afterAll(async () => {
  for (const s of [selfSigned, caSigned, wrongName]) if (s) await new Promise((r) => s.server.close(r))
  await rm(dir, {recursive: true, force: true})
})

describe('fingerprint pinning', () => {
  it('the right fingerprint works (any case, colons optional)', async () => {
    const fp = fingerprintOf('node.pem')
    for (const pin of [fp, fp.toLowerCase(), fp.replace(/:/g, '')]) {
      const t = createTrustedFetch({fingerprint: pin})
      try {
        const res = await t.fetch(`${selfSigned.url}/api2/json/version`)
        expect(res.status).toBe(200)
        expect(((await res.json()) as {data: {version: string}}).data.version).toBe('9.1.2')
      } finally {
        await t.close()
      }
    }
    expect(selfSigned.requests.length).toBe(3)
  })

  it('a wrong fingerprint fails with PGI_TLS_MISMATCH after the handshake, and the server receives no request', async () => {
    const before = {h: selfSigned.handshakes, r: selfSigned.requests.length}
    const wrong = 'AB:'.repeat(31) + 'AB'
    const t = createTrustedFetch({fingerprint: wrong})
    try {
      const e = await rejection(t.fetch(`${selfSigned.url}/api2/json/version`, {method: 'POST', body: 'vmid=100'}))
      expect(e.code).toBe(ErrorCode.TLS_MISMATCH)
      expect(e.exitCode).toBe(ExitCode.UNREACHABLE)
      expect(e.message).toContain(`expected ${wrong}`)
      expect(e.message).toContain(`got      ${fingerprintOf('node.pem')}`)
      expect(e.suggestions.join(' ')).toContain('pgi inventory trust')
    } finally {
      await t.close()
    }
    await new Promise((r) => setTimeout(r, 50))
    expect(selfSigned.handshakes).toBeGreaterThan(before.h) // it connected, and saw the certificate ("got" above)…
    expect(selfSigned.requests.length).toBe(before.r) // …but not one request
  })

  it('end to end through PveClient (its own requests): pinned works, mismatch is typed with where', async () => {
    const good = connectHypervisor(hv(selfSigned.url, {fingerprint: fingerprintOf('node.pem')}), {tokenSecret: TOKEN_SECRET})
    try {
      expect((await good.version()).release).toBe('9.1')
      const last = selfSigned.requests.at(-1)!
      expect(last.url).toBe('/api2/json/version')
      expect(last.headers.authorization).toMatch(/^PVEAPIToken=pgi@pve!deploy=/)
    } finally {
      await good.close()
    }
    const n = selfSigned.requests.length
    const bad = connectHypervisor(hv(selfSigned.url, {fingerprint: '00'.repeat(32)}), {tokenSecret: TOKEN_SECRET})
    try {
      const e = await rejection(bad.version())
      expect(e.code).toBe(ErrorCode.TLS_MISMATCH)
      expect(e.where?.hypervisor).toBe('hv-tls')
    } finally {
      await bad.close()
    }
    expect(selfSigned.requests.length).toBe(n)
  })

  it('a form POST (form encoded by the client) goes over the pinned connection intact', async () => {
    const c = connectHypervisor(hv(selfSigned.url, {fingerprint: fingerprintOf('node.pem')}), {tokenSecret: TOKEN_SECRET})
    try {
      await c.createVm('pve1', 100, {name: 'pgi-0130040y', sshkeys: 'ssh-ed25519 AAAA+/= ami@x', agent: true})
    } finally {
      await c.close()
    }
    const post = selfSigned.requests.find((r) => r.method === 'POST' && r.url === '/api2/json/nodes/pve1/qemu')!
    expect(post.headers['content-type']).toBe('application/x-www-form-urlencoded')
    expect(Number(post.headers['content-length'])).toBe(post.bodyLength)
    const form = new URLSearchParams(post.body)
    expect(form.get('vmid')).toBe('100')
    expect(form.get('agent')).toBe('1')
    expect(form.get('sshkeys')).toBe('ssh-ed25519%20AAAA%2B%2F%3D%20ami%40x')
  })

  it('uploads over the pinned connection with an exact Content-Length (not chunked)', async () => {
    const file = join(dir, 'img.qcow2')
    await writeFile(file, Buffer.alloc(2 * 1024 * 1024 + 5, 1))
    const c = connectHypervisor(hv(selfSigned.url, {fingerprint: fingerprintOf('node.pem')}), {tokenSecret: TOKEN_SECRET})
    try {
      await c.uploadFile('pve1', 'local', file, {filename: 'img.qcow2', content: 'import', sha256: 'ab'.repeat(32)})
    } finally {
      await c.close()
    }
    const up = selfSigned.requests.find((r) => r.url.endsWith('/storage/local/upload'))!
    expect(up.headers['transfer-encoding']).toBeUndefined()
    expect(Number(up.headers['content-length'])).toBe(up.bodyLength)
    expect(up.bodyLength).toBeGreaterThan(2 * 1024 * 1024)
  })

  it('gives the reason phrase and body of an error answer, and a request whose answer never comes is aborted by its signal', async () => {
    const t = createTrustedFetch({fingerprint: fingerprintOf('node.pem')})
    try {
      const res = await t.fetch(`${selfSigned.url}/api2/json/nodes/pve1/qemu/404/status/current`)
      expect(res.status).toBe(500)
      expect(res.statusText).toBe("Configuration file 'nodes/pve1/qemu-server/404.conf' does not exist")
      expect(await res.json()).toEqual({data: null})
      const started = performance.now()
      const e = await rejection(t.fetch(`${selfSigned.url}/api2/json/hang`, {signal: AbortSignal.timeout(300)}))
      expect((e as Error).name).toBe('TimeoutError')
      expect(performance.now() - started).toBeLessThan(5_000)
      // the trusted fetch also bounds a request itself (no signal): the client relies on it
      expect(t.fetch.honoursDeadline).toBe(true)
      const s2 = performance.now()
      const e2 = await rejection(t.fetch(`${selfSigned.url}/api2/json/hang`, {deadlineMs: 300}))
      expect((e2 as Error).name).toBe('TimeoutError')
      expect((e2 as Error).message).toBe('no answer within 300 ms')
      expect(performance.now() - s2).toBeGreaterThanOrEqual(290)
      expect(performance.now() - s2).toBeLessThan(5_000)
    } finally {
      await t.close()
    }
  })

  it('through PveClient: the per-request deadline is PGI_UNREACHABLE naming the call, and a missing VM is told from the reason phrase', async () => {
    const c = connectHypervisor(hv(selfSigned.url, {fingerprint: fingerprintOf('node.pem')}), {tokenSecret: TOKEN_SECRET, requestTimeoutMs: 300, retry: {networkRetries: 0}})
    try {
      expect(await c.vmStatus('pve1', 404)).toBeUndefined()
      const n = selfSigned.requests.length
      // vmConfig of an existing VM path that hangs: the client's deadline ends it
      const e = await rejection((c as unknown as {get: (p: string, q: undefined, w: object) => Promise<unknown>}).get('/hang', undefined, {hypervisor: 'hv-tls'}))
      expect(e.code).toBe(ErrorCode.UNREACHABLE)
      expect(e.message).toContain('no answer to GET /hang within 300 ms')
      expect(e.message).not.toContain('#pgi-call')
      expect(selfSigned.requests.length).toBe(n + 1)
      expect(selfSigned.requests.at(-1)!.url).toBe('/api2/json/hang') // the call tag (URL fragment) is never sent
    } finally {
      await c.close()
    }
  })

  it('refuses a pin that is not a SHA-256 fingerprint', () => {
    expect(() => createTrustedFetch({fingerprint: 'AB:CD'})).toThrow(/not a SHA-256 fingerprint/)
    expect(normalizeFingerprint('ab'.repeat(32))).toBe('AB:'.repeat(31) + 'AB')
  })
})

describe('CA verification', () => {
  it('a CA-signed certificate verifies with ca_file (relative to the inventory file)', async () => {
    const c = connectHypervisor(hv(caSigned.url, {caFile: 'ca1.pem'}), {tokenSecret: TOKEN_SECRET})
    try {
      expect((await c.version()).version).toBe('9.1.2')
    } finally {
      await c.close()
    }
  })

  it('a wrong CA fails (PGI_UNREACHABLE, certificate error) and sends nothing', async () => {
    const n = caSigned.requests.length
    const t = createTrustedFetch({caFile: join(dir, 'ca2.pem')})
    try {
      const e = await rejection(t.fetch(`${caSigned.url}/api2/json/version`))
      expect(e.code).toBe(ErrorCode.UNREACHABLE)
      expect(e.message).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|unable to verify/i)
      expect(e.message).toContain(`127.0.0.1:${caSigned.port}`)
    } finally {
      await t.close()
    }
    expect(caSigned.requests.length).toBe(n)
  })

  it('checks the host name: a certificate for another name fails even from the right CA', async () => {
    const t = createTrustedFetch({caFile: join(dir, 'ca1.pem')})
    try {
      const e = await rejection(t.fetch(`${wrongName.url}/api2/json/version`))
      expect(e.code).toBe(ErrorCode.UNREACHABLE)
      expect(e.message).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID/)
    } finally {
      await t.close()
    }
    expect(wrongName.requests).toHaveLength(0)
  })

  it('a self-signed node certificate is refused without a pin (system CAs)', async () => {
    const t = createTrustedFetch({})
    try {
      expect((await rejection(t.fetch(`${selfSigned.url}/api2/json/version`))).code).toBe(ErrorCode.UNREACHABLE)
    } finally {
      await t.close()
    }
  })
})

describe('inspectCertificate and unreachable hosts', () => {
  it('returns subject, issuer, validity and the SHA-256 fingerprint without sending a request', async () => {
    const n = selfSigned.requests.length
    const info = await inspectCertificate(selfSigned.url)
    expect(info.fingerprint256).toBe(fingerprintOf('node.pem'))
    expect(info.subject.CN).toBe('pve1.lab')
    expect(info.issuer.O).toBe('Proxmox Virtual Environment')
    expect(info.selfSigned).toBe(true)
    expect(info.chainVerified).toBe(false)
    expect(info.expired).toBe(false)
    expect(Date.parse(info.validTo) - Date.parse(info.validFrom)).toBe(2 * 86_400_000)
    expect(info.subjectAltName).toContain('IP Address:127.0.0.1')
    await new Promise((r) => setTimeout(r, 20))
    expect(selfSigned.requests.length).toBe(n)
    const ca = await inspectCertificate(caSigned.url, {ca: await readFile(join(dir, 'ca1.pem'), 'utf8')})
    expect(ca.chainVerified).toBe(true)
    expect(ca.selfSigned).toBe(false)
  })

  it('a closed port is PGI_UNREACHABLE naming host:port', async () => {
    // take a free port, then close it
    const srv = createTcpServer()
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
    const port = (srv.address() as {port: number}).port
    await new Promise((r) => srv.close(r))
    const e = await rejection(inspectCertificate(`https://127.0.0.1:${port}`))
    expect(e.code).toBe(ErrorCode.UNREACHABLE)
    expect(e.message).toContain(`127.0.0.1:${port}`)
    const t = createTrustedFetch({fingerprint: fingerprintOf('node.pem')})
    try {
      const e2 = await rejection(t.fetch(`https://127.0.0.1:${port}/api2/json/version`))
      expect(e2.code).toBe(ErrorCode.UNREACHABLE)
      expect(e2.message).toContain(`127.0.0.1:${port}: ECONNREFUSED`)
    } finally {
      await t.close()
    }
  })
})

describe('pgi inventory trust', () => {
  const yamlText = (url: string, tls: string) => `# yaml-language-server: $schema=../schema.json
# Hypervisors of the lab (a comment that must survive)
hypervisors:
  hv-lab:
    url: ${url}   # the API
    nodes: [pve1]
    pve_version: "9.1"
    tls:
${tls}
    token:
      id: pgi@pve!deploy
      secret: {env: PGI_TOKEN_HV_LAB}   # never the secret itself
    storage: {os: local-lvm, data: local-lvm, import: local}
    bridge: vmbr0
`

  it('writeFingerprint replaces a wrong pin in place: only that value changes, file:line reported', async () => {
    const {writeFingerprint} = await import('../../../src/proxmox/trust.js')
    const file = join(dir, 'hv-replace.yaml')
    const before = yamlText(selfSigned.url, `      fingerprint: '${'00:'.repeat(31)}00'   # pinned 2026-01`)
    await writeFile(file, before)
    const fp = fingerprintOf('node.pem')
    const w = await writeFingerprint(file, 'hv-lab', fp.toLowerCase())
    expect(w).toMatchObject({line: 9, column: 20, previous: '00:'.repeat(31) + '00'})
    const after = await readFile(file, 'utf8')
    const b = before.split('\n')
    const a = after.split('\n')
    expect(a.length).toBe(b.length)
    expect(a.filter((l, i) => l !== b[i])).toEqual([`      fingerprint: "${fp}"   # pinned 2026-01`])
  })

  it('writeFingerprint adds the pin beside ca_file, keeping the comments', async () => {
    const {writeFingerprint} = await import('../../../src/proxmox/trust.js')
    const file = join(dir, 'hv-add.yaml')
    await writeFile(file, yamlText(selfSigned.url, '      ca_file: ca1.pem   # the Région CA'))
    const fp = fingerprintOf('node.pem')
    const w = await writeFingerprint(file, 'hv-lab', fp)
    const after = await readFile(file, 'utf8')
    expect(after).toContain('# Hypervisors of the lab (a comment that must survive)')
    expect(after).toContain('# never the secret itself')
    expect(after).toContain('ca_file: ca1.pem')
    expect(after.split('\n')[w.line - 1]).toContain(`fingerprint: "${fp}"`)
    await expect(writeFingerprint(file, 'hv-nope', fp)).rejects.toThrow(/not defined/)
  })

  it('the command shows the certificate, refuses a mismatch (exit 8), and --write --yes pins it', async () => {
    const {default: Trust} = await import('../../../commands/inventory/trust.js')
    const inv = join(dir, 'inv')
    const {mkdir} = await import('node:fs/promises')
    await mkdir(inv, {recursive: true})
    const hvFile = join(inv, 'hypervisors.yaml')
    await writeFile(hvFile, yamlText(selfSigned.url, `      fingerprint: "${'AB:'.repeat(31)}AB"`))
    const repo = join(dirname(fileURLToPath(import.meta.url)), '../../..')
    const out: string[] = []
    const run = async (argv: string[]) => {
      process.exitCode = undefined
      out.length = 0
      // oclif prints through console.log
      const spy = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.map(String).join(' ')))
      try {
        await Trust.run(argv, repo)
      } finally {
        spy.mockRestore()
      }
      const code = process.exitCode
      process.exitCode = undefined
      return {code, json: JSON.parse(out.join('')) as {status: number; result?: {certificate: {fingerprint256: string}; matches?: boolean; written?: {line: number}}; error?: {code: string}}}
    }
    const fp = fingerprintOf('node.pem')
    const n = selfSigned.requests.length
    const r1 = await run(['hv-lab', '-i', inv, '--json', '--log-level', 'silent'])
    expect(r1.code).toBe(ExitCode.UNREACHABLE)
    expect(r1.json.error?.code).toBe(ErrorCode.TLS_MISMATCH)
    const r2 = await run(['hv-lab', '-i', inv, '--json', '--write', '--yes', '--log-level', 'silent'])
    expect(r2.json.status).toBe(0)
    expect(r2.json.result?.certificate.fingerprint256).toBe(fp)
    expect(r2.json.result?.written?.line).toBe(9)
    expect(await readFile(hvFile, 'utf8')).toContain(`fingerprint: "${fp}"`)
    const r3 = await run(['hv-lab', '-i', inv, '--json', '--log-level', 'silent'])
    expect(r3.json.result?.matches).toBe(true)
    expect(selfSigned.requests.length).toBe(n) // trust never sends an HTTP request
  })
})
