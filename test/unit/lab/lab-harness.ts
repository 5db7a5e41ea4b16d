import {mkdtemp, rm} from 'node:fs/promises'
import {request} from 'node:https'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {hashPassword, sha256Hex, type AccessConfig} from '../../../src/lab/access.js'
import type {VmBackend} from '../../../src/lab/backend.js'
import type {FaultConfig} from '../../../src/lab/faults.js'
import {startRuntime, type LabRuntime} from '../../../src/lab/runtime.js'
import {PGI_ROLE_PRIVILEGES} from '../../../src/proxmox/role.js'

/** An in-process lab (simulated backend) for unit tests, with helpers to call its API over HTTPS. */

export const TOKEN = 'pgi@pve!deploy=0d9c2f4e-1111-4222-8333-444455556666'
export const AUDITOR_TOKEN = 'audit@pve!ro=11111111-2222-4333-8444-555566667777'
export const ROOT_PASSWORD = 'lab-root-password'

export function testAccess(pveVersion: '8.4' | '9.1' = '9.1'): AccessConfig {
  return {
    users: {'root@pam': {passwordHash: hashPassword(ROOT_PASSWORD)}, 'pgi@pve': {}, 'audit@pve': {}},
    tokens: {
      'pgi@pve!deploy': {secretSha256: sha256Hex(TOKEN.split('=')[1]!), privsep: true},
      'audit@pve!ro': {secretSha256: sha256Hex(AUDITOR_TOKEN.split('=')[1]!), privsep: false},
    },
    roles: {PGI: [...PGI_ROLE_PRIVILEGES[pveVersion.startsWith('8') ? '8' : '9']], Auditor: ['VM.Audit', 'Datastore.Audit', 'Sys.Audit']},
    acl: [
      {path: '/', ugid: 'pgi@pve', roleid: 'PGI', propagate: true},
      {path: '/', ugid: 'pgi@pve!deploy', roleid: 'PGI', propagate: true},
      {path: '/', ugid: 'audit@pve', roleid: 'Auditor', propagate: true},
    ],
  }
}

export interface TestLab {
  rt: LabRuntime
  dir: string
  call(method: string, path: string, params?: Record<string, string | number | string[]>, o?: {node?: string; auth?: 'token' | 'none' | {token: string} | {cookie: string; csrf?: string}; json?: boolean}): Promise<{status: number; reason: string; body: any; headers: Record<string, string | string[] | undefined>}>
  /** Polls a task until it stops; returns its status. */
  wait(upid: string, node?: string): Promise<{status: string; exitstatus: string}>
  close(): Promise<void>
}

export function form(params: Record<string, string | number | string[]>): string {
  const parts: string[] = []
  for (const [k, v] of Object.entries(params)) for (const x of Array.isArray(v) ? v : [v]) parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(x))}`)
  return parts.join('&')
}

export async function startTestLab(o: {nodes?: number; pveVersion?: '8.4' | '9.1'; faults?: FaultConfig; timeScale?: number; lockTimeoutMs?: number; backend?: VmBackend} = {}): Promise<TestLab> {
  const dir = await mkdtemp(join(tmpdir(), 'pgi-lab-test-'))
  const nodes = Array.from({length: o.nodes ?? 1}, (_, i) => `lab${i + 1}`)
  const rt = await startRuntime({dir, nodes, backend: o.backend ?? 'simulated', pveVersion: o.pveVersion ?? '9.1', access: testAccess(o.pveVersion), faults: o.faults, timeScale: o.timeScale ?? 0, authFailDelayMs: 10, lockTimeoutMs: o.lockTimeoutMs ?? 200, simulated: {durations: {boot: 0}}})
  const call: TestLab['call'] = (method, path, params = {}, opts = {}) => {
    const node = opts.node ?? nodes[0]!
    const port = rt.ports[node]!
    const headers: Record<string, string> = {}
    const auth = opts.auth ?? 'token'
    if (auth === 'token') headers.Authorization = `PVEAPIToken=${TOKEN}`
    else if (auth !== 'none' && 'token' in auth) headers.Authorization = `PVEAPIToken=${auth.token}`
    else if (auth !== 'none') {
      headers.Cookie = `PVEAuthCookie=${encodeURIComponent(auth.cookie)}`
      if (auth.csrf) headers.CSRFPreventionToken = auth.csrf
    }
    let body: string | undefined
    let url = `/api2/json${path}`
    if (method === 'GET' || method === 'DELETE') {
      const q = form(params)
      if (q) url += `?${q}`
    } else if (opts.json) {
      body = JSON.stringify(params)
      headers['Content-Type'] = 'application/json'
    } else {
      body = form(params)
      headers['Content-Type'] = 'application/x-www-form-urlencoded'
    }
    return new Promise((resolve, reject) => {
      const req = request({host: '127.0.0.1', port, path: url, method, headers, ca: rt.certs[node]!.cert, servername: 'localhost'}, (res) => {
        let text = ''
        res.on('data', (d: Buffer) => (text += d.toString()))
        res.on('end', () => resolve({status: res.statusCode ?? 0, reason: res.statusMessage ?? '', body: text ? JSON.parse(text) : undefined, headers: res.headers}))
      })
      req.on('error', reject)
      if (body !== undefined) req.write(body)
      req.end()
    })
  }
  const wait: TestLab['wait'] = async (upid, node) => {
    const n = node ?? nodes[0]!
    for (;;) {
      const r = await call('GET', `/nodes/${n}/tasks/${encodeURIComponent(upid)}/status`, {}, {node: n})
      if (r.status === 500 && /lab fault injection/.test(r.reason)) continue // injected 500: poll again, as a client would
      if (r.status !== 200) throw new Error(`task status ${r.status} ${r.reason}`)
      if (r.body.data.status === 'stopped') return r.body.data
      await new Promise((res) => setTimeout(res, 5))
    }
  }
  return {
    rt,
    dir,
    call,
    wait,
    async close() {
      await rt.close()
      await rm(dir, {recursive: true, force: true})
    },
  }
}
