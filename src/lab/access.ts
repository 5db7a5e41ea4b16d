import {createHash, createHmac, randomBytes, scryptSync, timingSafeEqual} from 'node:crypto'

import type {PermissionCheck} from './pve-schema.js'

/**
 * Users, API tokens, roles and ACLs of a lab node — the part of PVE's access control the lab needs:
 * ticket login (PVEAuthCookie + CSRFPreventionToken), API tokens (`PVEAPIToken=USER@REALM!ID=SECRET`,
 * privilege-separated or not), roles and path ACLs with propagation, and PVE's 403 texts.
 * Secrets are kept only as hashes (scrypt for passwords, SHA-256 for token secrets).
 */

export interface AccessConfig {
  users: Record<string, {passwordHash?: string}>
  /** Key "user@realm!tokenid". */
  tokens: Record<string, {secretSha256: string; privsep: boolean}>
  roles: Record<string, string[]>
  acl: {path: string; ugid: string; roleid: string; propagate: boolean}[]
}

/** Everything PVE's Administrator role has that the lab knows about (root@pam has all of them). */
export const ALL_PRIVILEGES = [
  'Datastore.Allocate', 'Datastore.AllocateSpace', 'Datastore.AllocateTemplate', 'Datastore.Audit',
  'Sys.Audit', 'Sys.Modify', 'Sys.AccessNetwork', 'Sys.PowerMgmt', 'Sys.Console',
  'VM.Allocate', 'VM.Audit', 'VM.Backup', 'VM.Clone', 'VM.Config.CDROM', 'VM.Config.CPU', 'VM.Config.Cloudinit',
  'VM.Config.Disk', 'VM.Config.HWType', 'VM.Config.Memory', 'VM.Config.Network', 'VM.Config.Options',
  'VM.Console', 'VM.Migrate', 'VM.Monitor', 'VM.PowerMgmt', 'VM.Snapshot', 'VM.Snapshot.Rollback',
  'VM.GuestAgent.Audit', 'VM.GuestAgent.FileRead', 'VM.GuestAgent.FileWrite', 'VM.GuestAgent.FileSystemMgmt', 'VM.GuestAgent.Unrestricted',
  'SDN.Use', 'Pool.Allocate', 'Pool.Audit',
]

/** scrypt hash "scrypt$<salt b64>$<hash b64>" of a password. */
export function hashPassword(password: string): string {
  const salt = randomBytes(16)
  return `scrypt$${salt.toString('base64')}$${scryptSync(password, salt, 32).toString('base64')}`
}

function checkPassword(password: string, stored: string): boolean {
  const [kind, salt, hash] = stored.split('$')
  if (kind !== 'scrypt' || !salt || !hash) return false
  const got = scryptSync(password, Buffer.from(salt, 'base64'), 32)
  const want = Buffer.from(hash, 'base64')
  return got.length === want.length && timingSafeEqual(got, want)
}

export function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

/** Who made a request. `tokenid` set for API tokens ("pgi@pve!deploy"). */
export interface Principal {
  user: string
  tokenid?: string
}

export class AuthError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'AuthError'
  }
}

/** 403 with PVE's text: "Permission check failed (/vms/100, VM.Allocate)", or without details ("Permission check failed"). */
export class PermissionError extends Error {
  constructor(readonly path?: string, readonly privs?: string) {
    super(path === undefined ? 'Permission check failed' : `Permission check failed (${path}${privs === undefined ? '' : `, ${privs}`})`)
    this.name = 'PermissionError'
  }
}

export const TICKET_LIFETIME_S = 2 * 3600

export class AccessControl {
  /** HMAC key for tickets and CSRF tokens, new at each daemon start (tickets die with it, as a key rotation would). */
  readonly #key = randomBytes(32)
  /** Token header value → principal (avoids hashing on every request). */
  readonly #tokenCache = new Map<string, Principal>()
  readonly #privCache = new Map<string, Set<string>>()

  constructor(private cfg: AccessConfig, private readonly now: () => number = () => Math.floor(Date.now() / 1000)) {}

  setConfig(cfg: AccessConfig): void {
    this.cfg = cfg
    this.#tokenCache.clear()
    this.#privCache.clear()
    this.#effCache.clear()
  }

  config(): AccessConfig {
    return this.cfg
  }

  // ---- tickets ------------------------------------------------------------------------------

  /** POST /access/ticket: returns {ticket, CSRFPreventionToken, username}; throws AuthError. */
  login(username: string, password: string, realm?: string): {ticket: string; CSRFPreventionToken: string; username: string} {
    const user = username.includes('@') ? username : `${username}@${realm ?? 'pam'}`
    const stored = this.cfg.users[user]?.passwordHash
    if (!stored || !checkPassword(password, stored)) throw new AuthError('authentication failure')
    const t = this.now().toString(16).toUpperCase().padStart(8, '0')
    const plain = `PVE:${user}:${t}`
    return {ticket: `${plain}::${this.#sign(plain)}`, CSRFPreventionToken: this.#csrf(user, t), username: user}
  }

  #sign(data: string): string {
    return createHmac('sha256', this.#key).update(data).digest('base64')
  }

  #csrf(user: string, t: string): string {
    return `${t}:${createHmac('sha256', this.#key).update(`csrf:${t}:${user}`).digest('base64').replace(/=+$/, '')}`
  }

  /** Checks a PVEAuthCookie value (and, for writes, the CSRF header). */
  verifyTicket(ticket: string, csrf: string | undefined, write: boolean): Principal {
    const m = /^(PVE:([^:]+):([0-9A-F]{8}))::(.+)$/.exec(ticket)
    if (!m) throw new AuthError('invalid ticket')
    const [, plain, user, t, sig] = m
    const want = Buffer.from(this.#sign(plain!))
    const got = Buffer.from(sig!)
    if (want.length !== got.length || !timingSafeEqual(want, got)) throw new AuthError('invalid ticket')
    const age = this.now() - Number.parseInt(t!, 16)
    if (age > TICKET_LIFETIME_S || age < -300) throw new AuthError('ticket expired')
    if (!this.cfg.users[user!]) throw new AuthError('no such user')
    if (write) {
      if (!csrf || csrf !== this.#csrf(user!, t!)) throw new AuthError('Permission denied - invalid csrf token')
    }
    return {user: user!}
  }

  /** Checks "PVEAPIToken=USER@REALM!TOKENID=SECRET" (also accepts ":" as separator, as PVE does). */
  verifyToken(header: string): Principal {
    const hit = this.#tokenCache.get(header)
    if (hit) return hit
    const m = /^PVEAPIToken=([^!=\s]+)!([^=:\s]+)[=:](\S+)$/.exec(header.trim())
    if (!m) throw new AuthError('invalid token value!')
    const [, user, tokenName, secret] = m
    const tokenid = `${user}!${tokenName}`
    const tok = this.cfg.tokens[tokenid]
    if (!tok || !this.cfg.users[user!]) throw new AuthError('invalid token value!')
    const want = Buffer.from(tok.secretSha256, 'hex')
    const got = createHash('sha256').update(secret!).digest()
    if (want.length !== got.length || !timingSafeEqual(want, got)) throw new AuthError('invalid token value!')
    const p = {user: user!, tokenid}
    this.#tokenCache.set(header, p)
    return p
  }

  // ---- privileges -----------------------------------------------------------------------------

  /** Privileges `ugid` (a user or a token id) has on `path` from the ACL (no root shortcut). */
  #aclPrivs(ugid: string, path: string): Set<string> {
    const key = `${ugid}\0${path}`
    const cached = this.#privCache.get(key)
    if (cached) return cached
    // Most specific ACL entry wins, like PVE: walk from the path up to "/".
    const parts = path.split('/').filter(Boolean)
    let result = new Set<string>()
    for (let i = parts.length; i >= 0; i--) {
      const p = '/' + parts.slice(0, i).join('/')
      const entries = this.cfg.acl.filter((a) => a.ugid === ugid && a.path === p && (a.propagate || i === parts.length))
      if (entries.length > 0) {
        result = new Set(entries.flatMap((e) => (e.roleid === 'Administrator' ? ALL_PRIVILEGES : (this.cfg.roles[e.roleid] ?? []))))
        break
      }
    }
    this.#privCache.set(key, result)
    return result
  }

  readonly #effCache = new Map<string, Set<string>>()

  /** Effective privileges of a principal on a path (token with privsep: intersection with the user's). */
  privileges(p: Principal, path: string): Set<string> {
    const key = `${p.tokenid ?? p.user}\0${path}`
    let hit = this.#effCache.get(key)
    if (!hit) {
      hit = this.#computePrivileges(p, path)
      if (this.#effCache.size > 100_000) this.#effCache.clear()
      this.#effCache.set(key, hit)
    }
    return hit
  }

  #computePrivileges(p: Principal, path: string): Set<string> {
    const userPrivs = p.user === 'root@pam' ? new Set(ALL_PRIVILEGES) : this.#aclPrivs(p.user, path)
    if (!p.tokenid) return userPrivs
    const tok = this.cfg.tokens[p.tokenid]
    if (!tok?.privsep) return userPrivs
    const tokPrivs = this.#aclPrivs(p.tokenid, path)
    return new Set([...userPrivs].filter((x) => tokPrivs.has(x)))
  }

  has(p: Principal, path: string, priv: string): boolean {
    return this.privileges(p, path).has(priv)
  }

  /** Throws PermissionError when `p` lacks all of `privs` (or any of them with `any`). */
  check(p: Principal, path: string, privs: string[], any = false): void {
    const have = this.privileges(p, path)
    if (any) {
      if (!privs.some((x) => have.has(x))) throw new PermissionError(path, privs.join('|'))
      return
    }
    for (const x of privs) if (!have.has(x)) throw new PermissionError(path, x)
  }

  /**
   * Runs a method's `permissions` from the PVE schema (RPCEnvironment's check_api2_permissions and
   * exec_api2_perm_check): `user: 'all'` lets any authenticated user in (the handler filters),
   * `check` is evaluated with its `{param}` placeholders filled from the request: 'perm' (with
   * 'any' and 'require_param'), 'and', 'or'. Throws PermissionError with PVE's texts.
   */
  checkApi(p: Principal, perms: {check?: PermissionCheck; user?: string} | undefined, params: Record<string, unknown>): void {
    if (p.user === 'root@pam' && !p.tokenid) return
    if (!perms) throw new PermissionError(undefined, undefined)
    if (perms.user === 'all' || perms.user === 'world') return
    if (perms.check) {
      this.#evaluate(p, perms.check, params, false)
      return
    }
    throw new PermissionError()
  }

  #evaluate(p: Principal, check: PermissionCheck, params: Record<string, unknown>, noerr: boolean): boolean {
    const [test, ...rest] = check
    if (test === 'and') {
      for (const sub of rest) this.#evaluate(p, sub as PermissionCheck, params, false)
      return true
    }
    if (test === 'or') {
      for (const sub of rest) if (this.#evaluate(p, sub as PermissionCheck, params, true)) return true
      if (noerr) return false
      throw new PermissionError()
    }
    if (test === 'perm') {
      const [tmpl, privs, ...mods] = rest as [string, string[], ...unknown[]]
      const opts: Record<string, unknown> = {}
      for (let i = 0; i + 1 < mods.length; i += 2) opts[String(mods[i])] = mods[i + 1]
      const req = opts.require_param as string | undefined
      if (req && params[req] === undefined) {
        if (noerr) return false
        throw new PermissionError()
      }
      const path = tmpl.replace(/\{(\w+)\}/g, (_, k: string) => String(params[k] ?? ''))
      if (noerr) {
        const have = this.privileges(p, path)
        return opts.any ? privs.some((x) => have.has(x)) : privs.every((x) => have.has(x))
      }
      this.check(p, path, privs, Boolean(opts.any))
      return true
    }
    throw new Error(`lab defect: permission test '${String(test)}' is not implemented`)
  }

  /** Every path the principal has privileges on, with them (GET /access/permissions). */
  permissionTree(p: Principal, paths: string[]): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {}
    const all = new Set(['/', '/access', '/access/groups', '/nodes', '/pool', '/sdn', '/storage', '/vms', ...this.cfg.acl.map((a) => a.path), ...paths])
    for (const path of [...all].sort()) {
      const privs = [...this.privileges(p, path)].sort()
      if (privs.length > 0) out[path] = Object.fromEntries(privs.map((x) => [x, 1]))
    }
    return out
  }

  /** Whether a user or token exists ("user@realm" or "user@realm!token"). */
  exists(authid: string): boolean {
    return authid.includes('!') ? this.cfg.tokens[authid] !== undefined : this.cfg.users[authid] !== undefined
  }

  /** True for root@pam logged in with a ticket: may use skiplock and absolute paths. Tokens never are. */
  isRoot(p: Principal): boolean {
    return p.user === 'root@pam' && p.tokenid === undefined
  }
}
