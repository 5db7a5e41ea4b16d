/**
 * The one lab harness of the tests: a lab (src/lab/runtime.ts: the PVE-compatible HTTPS API over
 * a backend, simulated unless told) started in this process in a temporary folder, with what
 * every kind of test needs of it: the inventory entry of a lab node as a hypervisor (pinned to the
 * node's real certificate), raw API calls over HTTPS (to test the lab as PVE), task waits, and
 * its end (the lab stopped, its folder removed). The areas' fixtures build on it: the lab API
 * tests (test/unit/lab/lab-harness.ts), status (test/unit/status/sim-lab.ts: AMI tokens, VMs made
 * with deploy's metadata), deploy (test/unit/deploy/sim-lab.ts: an image, a secret store) and
 * rollout (test/unit/rollout/lab.ts, on deploy's).
 */
import {mkdtemp, rm} from 'node:fs/promises'
import {request} from 'node:https'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import type {Hypervisor} from '../../src/inventory/types.js'
import {startRuntime, type LabRuntime, type RuntimeOptions} from '../../src/lab/runtime.js'

export type LabAuth = 'none' | {token: string} | {cookie: string; csrf?: string}

export interface LabCallResult {
  status: number
  reason: string
  body: any
  headers: Record<string, string | string[] | undefined>
}

export interface Lab {
  rt: LabRuntime
  /** The test's temporary folder (the lab's own folder is in it, or is it). */
  dir: string
  /** The lab's nodes, lab1… */
  nodes: string[]
  /** A lab node as an inventory hypervisor: its HTTPS address, its certificate's fingerprint, the token given. */
  hypervisor(node: string, o: {name?: string; tokenId: string; tokenEnv: string; pveVersion?: string}): Hypervisor
  /** One API request over HTTPS (query string for GET/DELETE, a form or JSON body otherwise). */
  call(method: string, path: string, params: Record<string, string | number | string[]>, o: {node?: string; auth: LabAuth; json?: boolean}): Promise<LabCallResult>
  /** Polls a task until it stops (an injected 500 is polled again, as a client would); returns its status. */
  wait(upid: string, auth: LabAuth, node?: string): Promise<{status: string; exitstatus: string}>
  close(): Promise<void>
}

export interface LabOptions extends Omit<RuntimeOptions, 'dir' | 'nodes' | 'backend'> {
  /** Lab nodes (lab1…labN). */
  nodes: number
  backend?: RuntimeOptions['backend']
  /** Prefix of the temporary folder. */
  prefix: string
  /** The lab's folder inside the temporary one (default: the temporary folder itself). */
  subdir?: string
}

/** PVE's form encoding: a list as the same key repeated. */
export function form(params: Record<string, string | number | string[]>): string {
  const parts: string[] = []
  for (const [k, v] of Object.entries(params)) for (const x of Array.isArray(v) ? v : [v]) parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(x))}`)
  return parts.join('&')
}

export async function startLab(o: LabOptions): Promise<Lab> {
  const {nodes: count, prefix, subdir, backend, ...runtime} = o
  const dir = await mkdtemp(join(tmpdir(), prefix))
  const nodes = Array.from({length: count}, (_, i) => `lab${i + 1}`)
  const rt = await startRuntime({...runtime, dir: subdir ? join(dir, subdir) : dir, nodes, backend: backend ?? 'simulated'})
  const call: Lab['call'] = (method, path, params, opts) => {
    const node = opts.node ?? nodes[0]!
    const headers: Record<string, string> = {}
    const auth = opts.auth
    if (auth !== 'none' && 'token' in auth) headers.Authorization = `PVEAPIToken=${auth.token}`
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
      const req = request({host: '127.0.0.1', port: rt.ports[node]!, path: url, method, headers, ca: rt.certs[node]!.cert, servername: 'localhost'}, (res) => {
        let text = ''
        res.on('data', (d: Buffer) => (text += d.toString()))
        res.on('end', () => resolve({status: res.statusCode ?? 0, reason: res.statusMessage ?? '', body: text ? JSON.parse(text) : undefined, headers: res.headers}))
      })
      req.on('error', reject)
      if (body !== undefined) req.write(body)
      req.end()
    })
  }
  return {
    rt,
    dir,
    nodes,
    hypervisor: (node, h) => ({
      name: h.name ?? node,
      url: `https://127.0.0.1:${rt.ports[node]}`,
      nodes: [node],
      tls: {fingerprint: rt.fingerprints[node]!},
      token: {id: h.tokenId, secret: {env: h.tokenEnv}},
      storage: {os: 'local-vm', data: 'local-vm', import: 'local'},
      bridge: 'vmbr0',
      ...(h.pveVersion ? {pveVersion: h.pveVersion} : {}),
      source: {file: 'lab.yaml', line: 1, column: 1},
    }),
    call,
    async wait(upid, auth, node) {
      const n = node ?? nodes[0]!
      for (;;) {
        const r = await call('GET', `/nodes/${n}/tasks/${encodeURIComponent(upid)}/status`, {}, {node: n, auth})
        if (r.status === 500 && /lab fault injection/.test(r.reason)) continue
        if (r.status !== 200) throw new Error(`task status ${r.status} ${r.reason}`)
        if (r.body.data.status === 'stopped') return r.body.data
        await new Promise((res) => setTimeout(res, 5))
      }
    },
    async close() {
      await rt.close()
      await rm(dir, {recursive: true, force: true})
    },
  }
}
