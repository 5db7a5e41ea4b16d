import {hashPassword, sha256Hex, type AccessConfig} from '../../../src/lab/access.js'
import type {VmBackend} from '../../../src/lab/backend.js'
import type {FaultConfig} from '../../../src/lab/faults.js'
import type {LabRuntime} from '../../../src/lab/runtime.js'
import {PGI_ROLE_PRIVILEGES} from '../../../src/proxmox/role.js'
import {form, startLab, type LabAuth, type LabCallResult} from '../../helpers/lab.js'

/** The lab API tests' lab (simulated backend, test/helpers/lab.ts), its accounts, and calls to its API over HTTPS. */

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
  call(method: string, path: string, params?: Record<string, string | number | string[]>, o?: {node?: string; auth?: 'token' | LabAuth; json?: boolean}): Promise<LabCallResult>
  /** Polls a task until it stops; returns its status. */
  wait(upid: string, node?: string): Promise<{status: string; exitstatus: string}>
  close(): Promise<void>
}

export {form}

/** The lab API tests' lab (test/helpers/lab.ts), called with the pgi token unless told. */
export async function startTestLab(o: {nodes?: number; pveVersion?: '8.4' | '9.1'; faults?: FaultConfig; timeScale?: number; lockTimeoutMs?: number; backend?: VmBackend} = {}): Promise<TestLab> {
  const lab = await startLab({prefix: 'pgi-lab-test-', nodes: o.nodes ?? 1, backend: o.backend, pveVersion: o.pveVersion ?? '9.1', access: testAccess(o.pveVersion), faults: o.faults, timeScale: o.timeScale ?? 0, authFailDelayMs: 10, lockTimeoutMs: o.lockTimeoutMs ?? 200, simulated: {durations: {boot: 0}}})
  const token: LabAuth = {token: TOKEN}
  return {
    rt: lab.rt,
    dir: lab.dir,
    call: (method, path, params = {}, opts = {}) => lab.call(method, path, params, {...opts, auth: !opts.auth || opts.auth === 'token' ? token : opts.auth}),
    wait: (upid, node) => lab.wait(upid, token, node),
    close: () => lab.close(),
  }
}
