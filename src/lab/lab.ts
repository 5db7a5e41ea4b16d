import {randomUUID} from 'node:crypto'
import {access, chmod, mkdir, readFile, rm, writeFile} from 'node:fs/promises'
import {request} from 'node:https'
import {dirname, join, resolve} from 'node:path'

import {generateIdentity, identityToRecipient} from 'age-encryption'

import {ErrorCode, UserError} from '../errors.js'
import {spawnDetached} from '../exec.js'
import type {Io} from '../io.js'
import {labDir, moduleTreeDir} from '../paths.js'
import {PGI_ROLE_PRIVILEGES, pveMajor} from '../proxmox/role.js'
import {Secret} from '../secret.js'
import {localIdentity} from '../secrets/identity.js'
import {generatePassword, SecretStore} from '../secrets/store.js'
import {hashPassword, sha256Hex, type AccessConfig} from './access.js'
import {ensureNodeCert} from './certs.js'
import {sleep} from '../sleep.js'
import {faultConfigToObject, type FaultConfig} from './faults.js'
import {labInventoryYaml} from './inventory-gen.js'
import {readVmSnapshot, type VmSnapshotEntry} from './runtime.js'

/**
 * `pgi lab start|status|stop` as a library: start writes the lab's state, certificates, access
 * config (hashes only), secrets (in the secret store) and inventory, starts the daemon in the
 * background and waits for every node; stop ends the daemon (which stops every VM); status reads it all back.
 */

export const LAB_TOKEN_USER = 'pgi@pve'
export const LAB_TOKEN_ID = 'pgi@pve!deploy'
export const LAB_ROLE = 'PGI'

export interface LabNodeState {
  name: string
  hypervisor: string
  port?: number
  url?: string
  fingerprint: string
}

/** <dir>/lab.json */
export interface LabStateFile {
  lab: true
  formatVersion: 1
  dir: string
  backend: 'simulated' | 'qemu'
  pveVersion: '8.4' | '9.1'
  seed: number
  sites: number
  timeScale: number
  authFailDelayMs: number
  faults?: FaultConfig
  nodes: LabNodeState[]
  secretsDir: string
  inventory: string
  amiIdentity: string
  tokenId: string
  daemon?: {pid: number; started: string; logFile: string}
}

export interface StartOptions {
  dir?: string
  nodes?: number
  sites?: number
  backend?: 'simulated' | 'qemu'
  pveVersion?: '8.4' | '9.1'
  faults?: FaultConfig
  seed?: number
  /** Simulated task durations multiplier (default 1). */
  timeScale?: number
  /** Secret store folder (default <dir>/secrets, so the lab leaves nothing outside its dir). */
  secretsDir?: string
  authFailDelayMs?: number
  env?: NodeJS.ProcessEnv
  io?: Io
  /** How long to wait for the daemon and the nodes (ms). */
  readyTimeoutMs?: number
}

export interface LabSummary {
  lab: true
  running: boolean
  dir: string
  backend: string
  pveVersion: string
  inventory: string
  secretsDir: string
  amiIdentity: string
  requestLog: string
  daemon?: {pid: number; alive: boolean; logFile: string}
  nodes: {name: string; url?: string; fingerprint: string; pid?: number; vms: number; running: number}[]
  vms: VmSnapshotEntry[]
  /** Environment to use the lab with other pgi commands. */
  env: Record<string, string>
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Is `pid` our lab daemon for `dir`? (Guards against signalling a recycled pid.) */
async function isLabDaemon(pid: number, dir: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  const args = cmdline.split('\0')
  return args.some((a) => /lab[/\\]daemon\.js$/.test(a)) && args.includes(dir)
}

export async function readLabState(dir: string): Promise<LabStateFile | undefined> {
  const text = await readFile(join(dir, 'lab.json'), 'utf8').catch(() => undefined)
  return text === undefined ? undefined : (JSON.parse(text) as LabStateFile)
}

function daemonScript(): string {
  // dist/src/lab/daemon.js (also when this code runs from the CLI bundle, dist/cli/)
  return join(moduleTreeDir(), 'lab', 'daemon.js')
}

function getJson(url: string, cert: string, token: string, timeoutMs: number): Promise<{status: number; body: string}> {
  return new Promise((resolveP, reject) => {
    const req = request(url, {ca: cert, headers: {Authorization: `PVEAPIToken=${token}`}, timeout: timeoutMs}, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => (body += d.toString()))
      res.on('end', () => resolveP({status: res.statusCode ?? 0, body}))
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end()
  })
}


export async function startLab(o: StartOptions = {}): Promise<LabSummary> {
  const env = o.env ?? process.env
  const dir = resolve(o.dir ?? labDir(env))
  const nodesN = o.nodes ?? 1
  const sites = o.sites ?? 3
  const backend = o.backend ?? 'qemu'
  const pveVersion = o.pveVersion ?? '9.1'
  if (!Number.isInteger(nodesN) || nodesN < 1 || nodesN > 200) throw new UserError(ErrorCode.USAGE, `--nodes must be between 1 and 200, got ${nodesN}`)
  if (!Number.isInteger(sites) || sites < 0 || sites > 100_000) throw new UserError(ErrorCode.USAGE, `--sites must be between 0 and 100000, got ${sites}`)
  const prev = await readLabState(dir)
  if (prev?.daemon && pidAlive(prev.daemon.pid) && (await isLabDaemon(prev.daemon.pid, dir))) {
    throw new UserError(ErrorCode.LAB_ALREADY_RUNNING, `a lab is already running in ${dir} (daemon pid ${prev.daemon.pid})`, {suggestions: [`Stop it first: pgi lab stop --dir ${dir}`, 'Or start another lab in another folder: --dir DIR']})
  }
  await mkdir(dir, {recursive: true, mode: 0o700})
  // A lab starts clean: VMs and staged files of a previous run are gone (certificates are kept, so
  // fingerprints pinned elsewhere stay valid).
  for (const sub of ['backend', 'run', 'tmp', 'requests.jsonl', 'daemon.log']) await rm(join(dir, sub), {recursive: true, force: true})
  for (let i = 1; i <= 200; i++) await rm(join(dir, 'nodes', `lab${i}`, 'storage'), {recursive: true, force: true})

  const nodeNames = Array.from({length: nodesN}, (_, i) => `lab${i + 1}`)
  const nodes: LabNodeState[] = []
  for (const name of nodeNames) {
    const c = await ensureNodeCert(join(dir, 'nodes', name), name)
    nodes.push({name, hypervisor: name, fingerprint: c.fingerprint})
  }

  // Secrets: the token secret and root password are CSPRNG values kept in the secret store; the
  // daemon only gets their hashes.
  const secretsDir = resolve(o.secretsDir ?? join(dir, 'secrets'))
  const me = await localIdentity(env)
  const store = await SecretStore.open({dir: secretsDir, recipients: [me.recipient], env})
  const tokenSecret = new Secret(randomUUID())
  const rootPassword = generatePassword(24)
  for (const n of nodes) await store.put(`hypervisors/${n.hypervisor}/token`, tokenSecret)
  await store.put('lab/root-password', rootPassword)
  const privs = [...PGI_ROLE_PRIVILEGES[pveMajor(pveVersion)]]
  const accessCfg: AccessConfig = {
    users: {'root@pam': {passwordHash: hashPassword(rootPassword.reveal())}, [LAB_TOKEN_USER]: {}},
    tokens: {[LAB_TOKEN_ID]: {secretSha256: sha256Hex(tokenSecret.reveal()), privsep: true}},
    roles: {[LAB_ROLE]: privs},
    acl: [
      {path: '/', ugid: LAB_TOKEN_USER, roleid: LAB_ROLE, propagate: true},
      {path: '/', ugid: LAB_TOKEN_ID, roleid: LAB_ROLE, propagate: true},
    ],
  }
  await writeFile(join(dir, 'access.json'), JSON.stringify(accessCfg, null, 1), {mode: 0o600})
  await chmod(join(dir, 'access.json'), 0o600)

  // Sample AMI identity (its recipient is every generated establishment's age_recipient).
  const amiIdentityFile = join(dir, 'ami-identity.txt')
  let amiIdentity = await readFile(amiIdentityFile, 'utf8').then((t) => t.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-')), () => undefined)
  if (!amiIdentity) {
    amiIdentity = await generateIdentity()
    await writeFile(amiIdentityFile, `# sample AMI identity of the pgi lab\n# public key: ${await identityToRecipient(amiIdentity)}\n${amiIdentity}\n`, {mode: 0o600})
  }
  const amiRecipient = await identityToRecipient(amiIdentity)

  const inventory = join(dir, 'inventory', 'lab.yaml')
  const state: LabStateFile = {
    lab: true,
    formatVersion: 1,
    dir,
    backend,
    pveVersion,
    seed: o.seed ?? o.faults?.seed ?? 1,
    sites,
    timeScale: o.timeScale ?? 1,
    authFailDelayMs: o.authFailDelayMs ?? 3000,
    ...(o.faults ? {faults: {...o.faults, seed: o.seed ?? o.faults.seed}} : {}),
    nodes,
    secretsDir,
    inventory,
    amiIdentity: amiIdentityFile,
    tokenId: LAB_TOKEN_ID,
  }
  await writeFile(join(dir, 'lab.json'), JSON.stringify(state, null, 1))

  const logFile = join(dir, 'daemon.log')
  const {pid} = spawnDetached(process.execPath, [daemonScript(), dir], {logFile, cwd: dir})
  if (!pid) throw new UserError(ErrorCode.TOOL_FAILED, 'could not start the lab daemon')
  o.io?.info(`lab daemon started (pid ${pid}), waiting for ${nodesN} node(s)`)
  const deadline = Date.now() + (o.readyTimeoutMs ?? 120_000)
  let ready: {pid: number; ports: Record<string, number>} | undefined
  while (!ready) {
    const t = await readFile(join(dir, 'run', 'daemon.json'), 'utf8').catch(() => undefined)
    if (t) ready = JSON.parse(t) as typeof ready
    else {
      if (!pidAlive(pid) || Date.now() > deadline) {
        const tail = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').slice(-15).join('\n')
        if (pidAlive(pid)) process.kill(pid, 'SIGTERM')
        throw new UserError(ErrorCode.TOOL_FAILED, `the lab daemon did not become ready:\n${tail}`, {suggestions: [`See ${logFile}`]})
      }
      await sleep(100)
    }
  }
  state.daemon = {pid, started: new Date().toISOString(), logFile}
  const token = `${LAB_TOKEN_ID}=${tokenSecret.reveal()}`
  for (const n of nodes) {
    n.port = ready.ports[n.name]
    n.url = `https://127.0.0.1:${n.port}`
    if (state.faults?.deadNodes.includes(n.name)) continue // answers never come, by design
    const cert = await readFile(join(dir, 'nodes', n.name, 'pve-ssl.pem'), 'utf8')
    for (;;) {
      const r = await getJson(`${n.url}/api2/json/version`, cert, token, 5000).catch(() => undefined)
      if (r?.status === 200) break
      if (Date.now() > deadline) throw new UserError(ErrorCode.UNREACHABLE, `lab node ${n.name} does not answer on ${n.url}`, {suggestions: [`See ${logFile}`]})
      await sleep(100)
    }
  }
  await writeFile(join(dir, 'lab.json'), JSON.stringify(state, null, 1))
  await mkdir(dirname(inventory), {recursive: true})
  await writeFile(
    inventory,
    labInventoryYaml({
      nodes: nodes.map((n) => ({name: n.name, url: n.url!, fingerprint: n.fingerprint})),
      sites,
      pveVersion,
      tokenId: LAB_TOKEN_ID,
      recipients: [{name: 'lab-operator', key: me.recipient}],
      amiRecipient,
    }),
  )
  return labStatus({dir, env})
}

export async function labStatus(o: {dir?: string; env?: NodeJS.ProcessEnv} = {}): Promise<LabSummary> {
  const dir = resolve(o.dir ?? labDir(o.env ?? process.env))
  const state = await readLabState(dir)
  if (!state) throw new UserError(ErrorCode.LAB_NOT_RUNNING, `no lab in ${dir}`, {suggestions: ['Start one: pgi lab start --backend simulated --nodes 2 --sites 4']})
  const alive = state.daemon ? pidAlive(state.daemon.pid) && (await isLabDaemon(state.daemon.pid, dir)) : false
  const vms = alive ? await readVmSnapshot(dir) : []
  return {
    lab: true,
    running: alive,
    dir,
    backend: state.backend,
    pveVersion: state.pveVersion,
    inventory: state.inventory,
    secretsDir: state.secretsDir,
    amiIdentity: state.amiIdentity,
    requestLog: join(dir, 'requests.jsonl'),
    ...(state.daemon ? {daemon: {pid: state.daemon.pid, alive, logFile: state.daemon.logFile}} : {}),
    nodes: state.nodes.map((n) => ({
      name: n.name,
      url: n.url,
      fingerprint: n.fingerprint,
      pid: alive ? state.daemon?.pid : undefined,
      vms: vms.filter((v) => v.node === n.name).length,
      running: vms.filter((v) => v.node === n.name && v.status === 'running').length,
    })),
    vms,
    env: {PGI_INVENTORY: state.inventory, PGI_SECRETS_DIR: state.secretsDir},
  }
}

export async function stopLab(o: {dir?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; io?: Io} = {}): Promise<{stopped: boolean; dir: string; pid?: number}> {
  const dir = resolve(o.dir ?? labDir(o.env ?? process.env))
  const state = await readLabState(dir)
  if (!state) throw new UserError(ErrorCode.LAB_NOT_RUNNING, `no lab in ${dir}`, {suggestions: ['Nothing to stop. Start one with: pgi lab start']})
  const pid = state.daemon?.pid
  if (!pid || !pidAlive(pid) || !(await isLabDaemon(pid, dir))) {
    await rm(join(dir, 'run'), {recursive: true, force: true})
    return {stopped: false, dir, ...(pid ? {pid} : {})}
  }
  process.kill(pid, 'SIGTERM')
  const deadline = Date.now() + (o.timeoutMs ?? 90_000)
  while (pidAlive(pid) && Date.now() < deadline) await sleep(100)
  if (pidAlive(pid)) {
    o.io?.warn(`lab daemon ${pid} did not stop within the timeout: killing it`)
    process.kill(pid, 'SIGKILL')
    while (pidAlive(pid)) await sleep(50)
  }
  await rm(join(dir, 'run'), {recursive: true, force: true})
  await rm(join(dir, 'tmp'), {recursive: true, force: true})
  const {daemon: _d, ...rest} = state
  await writeFile(join(dir, 'lab.json'), JSON.stringify({...rest, nodes: state.nodes.map(({port: _p, url: _u, ...n}) => n)}, null, 1))
  return {stopped: true, dir, pid}
}

/** FaultConfig for lab.json / --json output. */
export function describeFaults(f: FaultConfig | undefined): Record<string, unknown> | undefined {
  return f ? faultConfigToObject(f) : undefined
}

/** For `access` checks in tests. */
export async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false)
}
