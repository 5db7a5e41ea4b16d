/**
 * TEST FAKE — not a Proxmox client. An in-memory stand-in for the `PveApi` interface with just
 * enough behaviour for the credentials tests: one running VM whose "guest" runs a model of the
 * guest contract's `pgi-configure` (JSON on stdin, `{"changed":[…]}` on stdout) and of
 * `ssh-keygen -l`. Every agentExec call is recorded so tests can check what reached the guest
 * and how (stdin vs argv). Methods the credentials code does not use throw.
 */
import type {AgentExecResult, PveApi, PveVmStatus} from '../../../src/proxmox/types.js'

export interface ExecRecord {
  node: string
  vmid: number
  command: string[]
  inputData?: string
}

export class FakeGuestPveApi implements Pick<PveApi, 'hypervisor' | 'vmStatus' | 'agentExec'> {
  readonly hypervisor = 'hv-test'
  readonly calls: ExecRecord[] = []
  /** The passwords the guest currently uses, as pgi-configure last set them. */
  readonly guest: {sql_admin?: string; tryton_admin?: string; ami?: string} = {}
  vmState: 'running' | 'stopped' | 'absent' = 'running'
  /** Make the next N pgi-configure runs fail (exit 1). */
  failConfigure = 0

  constructor(
    readonly node: string,
    readonly vmid: number,
  ) {}

  async vmStatus(node: string, vmid: number): Promise<PveVmStatus | undefined> {
    if (node !== this.node || vmid !== this.vmid || this.vmState === 'absent') return undefined
    return {vmid, status: this.vmState}
  }

  async agentExec(node: string, vmid: number, command: string[], opts: {inputData?: string; timeoutMs?: number} = {}): Promise<AgentExecResult> {
    this.calls.push({node, vmid, command: [...command], inputData: opts.inputData})
    if (node !== this.node || vmid !== this.vmid || this.vmState !== 'running') throw new Error('QEMU guest agent is not running')
    if (command[0] === '/usr/local/sbin/pgi-configure') {
      if (this.failConfigure > 0) {
        this.failConfigure--
        return {exitcode: 1, stdout: '', stderr: 'pgi-configure: postgresql is not running', truncated: false}
      }
      const input = JSON.parse(opts.inputData ?? '{}') as Record<string, {login: string; password: string}>
      const changed: string[] = []
      for (const k of ['sql_admin', 'tryton_admin', 'ami'] as const) {
        const v = input[k]
        if (!v) continue
        if (this.guest[k] !== v.password) changed.push(k)
        this.guest[k] = v.password
      }
      return {exitcode: 0, stdout: JSON.stringify({changed}), stderr: '', truncated: false}
    }
    if (command[0] === '/bin/sh' && command.join(' ').includes('ssh-keygen')) {
      return {exitcode: 0, stdout: '256 SHA256:q1w2e3r4t5y6u7i8o9p0AbCdEfGhIjKlMnOpQrStUvW root@pgi-0130040y (ED25519)\n', stderr: '', truncated: false}
    }
    return {exitcode: 127, stdout: '', stderr: `${command[0]}: not found`, truncated: false}
  }
}

/**
 * The fake as a full `PveApi`: the methods the credentials code does not use throw when called
 * (a Proxy, so the fake keeps compiling as the interface grows).
 */
export function asPveApi(fake: FakeGuestPveApi): PveApi {
  return new Proxy(fake, {
    get(target, prop, receiver) {
      if (prop in target) {
        const v = Reflect.get(target, prop, receiver) as unknown
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
      }
      if (typeof prop === 'symbol' || prop === 'then') return undefined
      return () => {
        throw new Error(`FakeGuestPveApi: ${prop} is not implemented (unused by the credentials code)`)
      }
    },
  }) as unknown as PveApi
}
