import {createHash, createHmac, randomBytes, randomInt} from 'node:crypto'

import type {AuditEntry} from '../db/console.js'
import type {GuestEnv, RunResult} from './simulated-guest-state.js'

/**
 * `pgi-console` in the simulated guest: a model of the teachers' console's command line
 * (images/pgi-tryton/files/usr/local/lib/pgi/console/cli.py and accounts.py; docs/console.md
 * "Command line"), written from its contract: the same commands (`teacher add|list|disable|enable|
 * reset`, `audit`, `owners`), the same JSON answers (accounts as accounts.public prints them, never
 * a hash; one-time codes XXXX-XXXX-XXXX from the same alphabet, kept only as a keyed hash), the same
 * rules (e-mail and name checks, one account per e-mail, Tryton logins prof.<local part> made
 * unique), the same audit lines (actor cli:root, actions enseignant.creer/desactiver/reactiver/
 * reinitialiser) and the same failures: {"error": {code, message}} with exit status 2 usage,
 * 3 invalid, 4 not found, 5 exists. The store lives where the image keeps it, on the data disk
 * (/srv/pgi/console), so it follows the disk. What it does not model: the web application (its
 * pages, sessions, jobs), which only a real VM runs (test/e2e/console).
 *
 * Also pgi-tls's record, /run/pgi/tls.json: a certificate made at the first boot with a data disk
 * and kept on it (/srv/pgi/.pgi/tls), so its fingerprint survives a new OS disk as the image's does.
 */

const STORE = '/srv/pgi/console/console.sim.json'
const TLS_SAVED = '/srv/pgi/.pgi/tls/server.crt'
const CODE_ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZ23456789'
const EMAIL_RE = /^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$/
const SETUP_CODE_TTL_S = 7 * 24 * 3600

interface Account {
  id: number
  email: string
  name: string
  tryton_login: string
  status: 'pending' | 'active' | 'disabled'
  created_at: string
  created_by: string
  password_set_at: string | null
  last_login: string | null
  setup_code_hash: string | null
  setup_expires: number | null
  has_password: boolean
}

interface Store {
  key: string
  accounts: Account[]
  audit: AuditEntry[]
}

class ConsoleError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message)
  }
}

const iso = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')

function load(env: GuestEnv): Store {
  const f = env.disk!.files.get(STORE)
  if (f) return JSON.parse(f.data.toString()) as Store
  return {key: randomBytes(32).toString('hex'), accounts: [], audit: []}
}

function save(env: GuestEnv, s: Store): void {
  env.disk!.files.set(STORE, {data: Buffer.from(JSON.stringify(s)), mtime: env.now()})
}

function audit(env: GuestEnv, s: Store, actor: string, action: string, target: string | null, detail: string | null): void {
  s.audit.push({id: s.audit.length + 1, at: iso(env.now()), actor, role: 'cli', action, target, result: 'ok', detail, ip: null})
}

function publicOf(a: Account) {
  return {
    id: a.id,
    email: a.email,
    name: a.name,
    tryton_login: a.tryton_login,
    status: a.status,
    created_at: a.created_at,
    created_by: a.created_by,
    password_set_at: a.password_set_at,
    last_login: a.last_login,
    setup_code_expires: a.setup_code_hash && a.setup_expires ? iso(a.setup_expires * 1000) : null,
  }
}

function checkEmail(email: string | undefined): string {
  const e = (email ?? '').trim().toLowerCase()
  if (!EMAIL_RE.test(e) || e.includes('..')) throw new ConsoleError('invalid', `adresse électronique '${e}' invalide`, 3)
  return e
}

function checkName(name: string | undefined): string {
  const n = (name ?? '').trim()
  if (!n || n.length > 120 || /\p{C}/u.test(n)) throw new ConsoleError('invalid', `nom '${n}' : de 1 à 120 caractères imprimables`, 3)
  return n
}

function find(s: Store, ident: string | undefined): Account {
  const e = (ident ?? '').trim().toLowerCase()
  const a = s.accounts.find((x) => x.email === e)
  if (!a) throw new ConsoleError('not_found', `aucun compte enseignant ${ident ?? ''}`, 4)
  return a
}

function tryton(s: Store, email: string): string {
  const local =
    email
      .split('@')[0]!
      .normalize('NFKD')
      .replace(/\p{M}/gu, '')
      .toLowerCase()
      .replace(/[^a-z0-9._-]+/g, '.')
      .replace(/^[._-]+|[._-]+$/g, '')
      .slice(0, 40) || 'enseignant'
  let login = `prof.${local}`
  for (let n = 2; s.accounts.some((a) => a.tryton_login === login); n++) login = `prof.${local}${n}`
  return login
}

function newCode(env: GuestEnv, s: Store, a: Account): string {
  const raw = Array.from({length: 12}, () => CODE_ALPHABET[randomInt(CODE_ALPHABET.length)]).join('')
  const code = `${raw.slice(0, 4)}-${raw.slice(4, 8)}-${raw.slice(8)}`
  a.setup_code_hash = createHmac('sha256', s.key).update(raw).digest('hex')
  a.setup_expires = Math.floor(env.now() / 1000) + SETUP_CODE_TTL_S
  return code
}

/** argparse's rules for the options each command has. */
function options(args: string[], names: string[]): {pos: string[]; opt: Record<string, string>} {
  const pos: string[] = []
  const opt: Record<string, string> = {}
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (a.startsWith('--')) {
      const [k, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined]
      if (!names.includes(k)) throw new ConsoleError('usage', `pgi-console: unrecognized arguments: ${a}`, 2)
      const v = inline ?? args[++i]
      if (v === undefined) throw new ConsoleError('usage', `pgi-console: argument --${k}: expected one argument`, 2)
      opt[k] = v
    } else pos.push(a)
  }
  return {pos, opt}
}

function teacher(env: GuestEnv, s: Store, args: string[]): unknown {
  const [cmd, ...rest] = args
  const by = 'cli:root'
  switch (cmd) {
    case 'add': {
      const {opt} = options(rest, ['name', 'email'])
      if (opt.name === undefined || opt.email === undefined) throw new ConsoleError('usage', 'pgi-console teacher add: the following arguments are required: --name, --email', 2)
      const name = checkName(opt.name)
      const email = checkEmail(opt.email)
      if (s.accounts.some((a) => a.email === email)) throw new ConsoleError('exists', `un compte existe déjà pour ${email}`, 5)
      const a: Account = {id: s.accounts.length + 1, email, name, tryton_login: tryton(s, email), status: 'pending', created_at: iso(env.now()), created_by: by, password_set_at: null, last_login: null, setup_code_hash: null, setup_expires: null, has_password: false}
      s.accounts.push(a)
      const code = newCode(env, s, a)
      audit(env, s, by, 'enseignant.creer', email, 'code à usage unique émis')
      return {teacher: publicOf(a), setup_code: code, setup_page: '/console/activer'}
    }
    case 'list':
      return [...s.accounts].sort((x, y) => (x.name + x.email < y.name + y.email ? -1 : 1)).map(publicOf)
    case 'disable':
    case 'enable':
    case 'reset': {
      const {pos} = options(rest, [])
      if (pos.length !== 1) throw new ConsoleError('usage', `pgi-console teacher ${cmd}: the following arguments are required: email`, 2)
      const a = find(s, pos[0])
      if (cmd === 'disable') {
        a.status = 'disabled'
        a.setup_code_hash = null
        a.setup_expires = null
        audit(env, s, by, 'enseignant.desactiver', a.email, null)
        return {teacher: publicOf(a)}
      }
      if (cmd === 'enable') {
        a.status = a.has_password ? 'active' : 'pending'
        audit(env, s, by, 'enseignant.reactiver', a.email, null)
        return {teacher: publicOf(a)}
      }
      a.has_password = false
      a.password_set_at = null
      a.status = 'pending'
      const code = newCode(env, s, a)
      audit(env, s, by, 'enseignant.reinitialiser', a.email, 'mot de passe effacé, nouveau code émis')
      return {teacher: publicOf(a), setup_code: code, setup_page: '/console/activer'}
    }
    default:
      throw new ConsoleError('usage', `pgi-console teacher: argument tcmd: invalid choice: '${cmd ?? ''}'`, 2)
  }
}

function auditRows(s: Store, args: string[]): AuditEntry[] {
  const {opt} = options(args, ['since', 'limit', 'actor'])
  const limit = opt.limit === undefined ? 200 : Number(opt.limit)
  if (!Number.isInteger(limit)) throw new ConsoleError('usage', `pgi-console audit: argument --limit: invalid int value: '${opt.limit}'`, 2)
  if (limit < 1 || limit > 100000) throw new ConsoleError('usage', '--limit: 1 to 100000', 2)
  // the store compares the text of `at` (YYYY-MM-DDTHH:MM:SSZ), as SQLite does
  return s.audit
    .filter((r) => (opt.since === undefined || r.at >= opt.since) && (opt.actor === undefined || r.actor === opt.actor))
    .sort((a, b) => b.id - a.id)
    .slice(0, limit)
}

/** Runs `pgi-console ARGS…` in the simulated guest. */
export function simulatedPgiConsole(env: GuestEnv, args: string[]): RunResult {
  const failed = (e: ConsoleError): RunResult => ({out: JSON.stringify({error: {code: e.code, message: e.message}}) + '\n', err: `pgi-console: ${e.message}\n`, code: e.status})
  try {
    const [cmd, ...rest] = args
    if (!['teacher', 'audit', 'owners'].includes(cmd ?? '')) throw new ConsoleError('usage', `pgi-console: argument cmd: invalid choice: '${cmd ?? ''}'`, 2)
    // the store is on the data disk: without it the console does not run
    if (!env.boot.datadisk.ok || !env.disk) throw new ConsoleError('failed', "OperationalError: unable to open database file (no data disk mounted on /srv/pgi)", 1)
    const s = load(env)
    let out: unknown
    if (cmd === 'teacher') out = teacher(env, s, rest)
    else if (cmd === 'audit') out = auditRows(s, rest)
    else out = []
    save(env, s)
    return {out: JSON.stringify(out) + '\n', err: '', code: 0}
  } catch (e) {
    if (e instanceof ConsoleError) return failed(e)
    return failed(new ConsoleError('failed', `${(e as Error).name}: ${(e as Error).message}`, 1))
  }
}

/**
 * /run/pgi/tls.json as pgi-tls writes it: {"sha256": "AB:CD:…", "not_after", "subject", "saved"}.
 * The certificate (here: its random DER stand-in) is made once on the data disk and kept there.
 */
export function simulatedTlsInfo(env: GuestEnv): Buffer {
  let cert: Buffer
  let saved = false
  if (env.boot.datadisk.ok && env.disk) {
    let f = env.disk.files.get(TLS_SAVED)
    if (!f) {
      f = {data: randomBytes(400), mtime: env.now()}
      env.disk.files.set(TLS_SAVED, f)
    }
    cert = f.data
    saved = true
  } else {
    const path = '/etc/pgi/tls/server.crt'
    let f = env.osFiles.get(path)
    if (!f) {
      f = {data: randomBytes(400), mtime: env.now()}
      env.osFiles.set(path, f)
    }
    cert = f.data
  }
  const fp = createHash('sha256').update(cert).digest('hex').toUpperCase().match(/../g)!.join(':')
  const notAfter = new Date(env.now() + 3650 * 86_400_000).toUTCString().replace(/^\w+, (\d+) (\w+) (\d+) (.*) GMT$/, '$2 $1 $4 $3 GMT')
  return Buffer.from(JSON.stringify({sha256: fp, not_after: notAfter, subject: `CN=${env.hostname},O=PGI`, saved}) + '\n')
}
