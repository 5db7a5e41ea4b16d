import {existsSync, readFileSync} from 'node:fs'
import {mkdir, mkdtemp, readdir, rename, rm, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {run} from '../../src/exec.js'
import {resolveSources} from '../../src/image/sources.js'
import {stateDir} from '../../src/paths.js'

/**
 * proteus, Tryton's scripting client, of a given series, to log in to a PGI server as a real
 * Tryton client does (proteus must be the server's series). Debian's python3 runs it
 * (/usr/bin/python3: another python3 may come first on the PATH).
 *
 * - 6.0: Debian 12's tryton-proteus, installed on this host by apt (scripts/install-deps.sh).
 * - 7.0: Debian 13's tryton-proteus, pure Python (it needs python3-dateutil and
 *   python3-defusedxml, which Debian 12 has): its .deb is fetched with `apt-get download` from a
 *   trixie source derived from this host's apt sources (as `pgi image build` derives them, no
 *   mirror name of its own), with apt's lists and cache in a folder of its own (the host's are
 *   not touched), unpacked with `dpkg-deb -x` into a cache folder and put on PYTHONPATH. The
 *   Python package registry is not used (not reachable here).
 *
 * The cache is `$PGI_TEST_CACHE/proteus/<series>` (default `<state dir>/test-cache`), made once.
 */
export interface Proteus {
  series: string
  /** The proteus version found ("7.0.1"). */
  version: string
  /** Environment for /usr/bin/python3 (PYTHONPATH for an unpacked proteus). */
  env: Record<string, string>
  /** Runs a Python script with this proteus; `input` goes to its stdin as JSON (how secrets reach it). */
  python(script: string, input?: unknown, timeoutMs?: number): Promise<string>
  /**
   * Logs in to `database` on the Tryton server at `url` (http://127.0.0.1:PORT/) as `login` with
   * `password` (sent on stdin), and reads what a teacher's first session reads: the user, the
   * activated modules asked for, and the count of the French chart's account templates.
   */
  login(url: string, database: string, login: string, password: string, modules?: string[]): Promise<ProteusLogin>
}

export interface ProteusLogin {
  proteus: string
  server: string
  user: {id: number; login: string; name: string}
  modules: Record<string, string>
  accountTemplates: number
}

const PYTHON = '/usr/bin/python3'
/** The Debian release whose tryton-proteus is each series (Debian 12: 6.0, Debian 13: 7.0). */
const SUITES: Record<string, string> = {'6.0': 'bookworm', '7.0': 'trixie'}

// XML-RPC with the credentials in the URL: trytond authenticates every call (HTTP basic auth,
// checked as common.db.login checks them); the URL is built here from stdin, never a command line
const LOGIN_SCRIPT = String.raw`
import json, sys, urllib.parse, xmlrpc.client
import proteus
from proteus import config, Model
d = json.load(sys.stdin)
u = urllib.parse.urlsplit(d['url'])
url = '%s://%s:%s@%s/%s/' % (u.scheme, urllib.parse.quote(d['login'], safe=''), urllib.parse.quote(d['password'], safe=''), u.netloc, d['database'])
cfg = config.set_xmlrpc(url)
me = Model.get('res.user').find([('login', '=', d['login'])])[0]
mods = {m.name: m.state for m in Model.get('ir.module').find([('name', 'in', d['modules'])])}
try:
    templates = len(Model.get('account.account.template').find([]))
except Exception:
    templates = 0
# the server's version: a call outside any database (the root path)
server = xmlrpc.client.ServerProxy('%s://%s/' % (u.scheme, u.netloc)).common.server.version()
print(json.dumps({'proteus': proteus.__version__, 'server': server,
                  'user': {'id': me.id, 'login': me.login, 'name': me.name}, 'modules': mods, 'accountTemplates': templates}))
`

async function versionOf(env: Record<string, string>): Promise<string | undefined> {
  const r = await run(PYTHON, ['-c', 'import proteus; print(proteus.__version__)'], {env, allowFailure: true, timeoutMs: 60_000})
  return r.exitCode === 0 ? r.stdout.trim() : undefined
}

/** Downloads and unpacks `tryton-proteus` of `suite` into `dir` (absent before; made atomically). */
async function unpackFromArchive(suite: string, dir: string): Promise<void> {
  await mkdir(dirname(dir), {recursive: true})
  const work = await mkdtemp(`${dir}.partial-`)
  try {
    const sources = await resolveSources(process.env.PGI_IMAGE_MIRROR, suite, join(work, 'etc', 'sources.list.d'))
    if (!sources.arg.startsWith('/')) throw new Error(`proteus: PGI_IMAGE_MIRROR must be a sources file here, not ${sources.arg}`)
    for (const d of ['lists/partial', 'cache/archives/partial', 'etc/preferences.d', 'etc/apt.conf.d']) await mkdir(join(work, d), {recursive: true})
    await writeFile(join(work, 'status'), '')
    // apt reads nothing of the host's configuration but its keyrings (the sources' Signed-By)
    const conf = join(work, 'apt.conf')
    await writeFile(
      conf,
      [
        `Dir::Etc::SourceList "/dev/null";`,
        `Dir::Etc::SourceParts "${dirname(sources.arg)}";`,
        `Dir::Etc::Preferences "/dev/null";`,
        `Dir::Etc::PreferencesParts "${join(work, 'etc', 'preferences.d')}";`,
        `Dir::Etc::Parts "${join(work, 'etc', 'apt.conf.d')}";`,
        `Dir::State::Lists "${join(work, 'lists')}";`,
        `Dir::State::status "${join(work, 'status')}";`,
        `Dir::Cache "${join(work, 'cache')}";`,
        `Dir::Cache::Archives "${join(work, 'cache', 'archives')}";`,
        `APT::Architecture "amd64";`,
        `Acquire::Languages "none";`,
        `APT::Sandbox::User "root";`,
        '',
      ].join('\n'),
    )
    if (!sources.arg.endsWith('.sources') || dirname(sources.arg) !== join(work, 'etc', 'sources.list.d')) {
      // the host's file is of the same release: copied beside the configuration
      await mkdir(join(work, 'etc', 'sources.list.d'), {recursive: true})
      const {copyFile} = await import('node:fs/promises')
      await copyFile(sources.arg, join(work, 'etc', 'sources.list.d', sources.arg.endsWith('.sources') ? 'host.sources' : 'host.list'))
    }
    const env = {APT_CONFIG: conf}
    await run('apt-get', ['update', '-q'], {env, timeoutMs: 10 * 60_000})
    await run('apt-get', ['download', '-q', 'tryton-proteus'], {env, cwd: work, timeoutMs: 10 * 60_000})
    const deb = (await readdir(work)).find((n) => /^tryton-proteus_.*\.deb$/.test(n))
    if (!deb) throw new Error(`proteus: apt-get download gave no tryton-proteus .deb in ${work}`)
    await run('dpkg-deb', ['-x', join(work, deb), join(work, 'root')])
    await rename(join(work, 'root'), dir)
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

/** proteus of `series` ("6.0", "7.0"), ready to run. */
export async function proteusFor(series: string): Promise<Proteus> {
  const suite = SUITES[series]
  if (!suite) throw new Error(`proteus ${series}: no Debian release ships it here (known: ${Object.keys(SUITES).join(', ')})`)
  let env: Record<string, string>
  const host = await versionOf({})
  if (host?.startsWith(series + '.')) {
    env = {}
  } else if (suite === 'bookworm') {
    throw new Error(`proteus ${series}: this host's python3 has proteus ${host ?? 'not installed'}: apt-get install tryton-proteus (Debian 12)`)
  } else {
    const dir = join(process.env.PGI_TEST_CACHE ?? join(stateDir(), 'test-cache'), 'proteus', series)
    if (!existsSync(dir)) await unpackFromArchive(suite, dir)
    // before the host's own proteus (a Debian 12 host may have 6.0 installed)
    env = {PYTHONPATH: join(dir, 'usr', 'lib', 'python3', 'dist-packages')}
  }
  const version = await versionOf(env)
  if (!version?.startsWith(series + '.')) throw new Error(`proteus ${series}: found ${version ?? 'none'} instead`)
  const python = async (script: string, input?: unknown, timeoutMs = 5 * 60_000): Promise<string> => {
    const r = await run(PYTHON, ['-c', script], {env: {...env, PYTHONDONTWRITEBYTECODE: '1'}, input: input === undefined ? '' : JSON.stringify(input), timeoutMs, allowFailure: true})
    if (r.exitCode !== 0) throw new Error(`proteus ${version} script failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(-8).join('\n')}`)
    return r.stdout
  }
  return {
    series,
    version,
    env,
    python,
    async login(url, database, login, password, modules = ['account_fr']) {
      const out = await python(LOGIN_SCRIPT, {url, database, login, password, modules})
      return JSON.parse(out.trim().split('\n').slice(-1)[0]!) as ProteusLogin
    },
  }
}

/**
 * The start of a proteus script that works in one database: reads {url, database, login,
 * password, …} as JSON on stdin (`d`) and connects over XML-RPC, the credentials in the URL built
 * here, never on a command line.
 */
export const PROTEUS_CONNECT = String.raw`
import datetime, json, sys, urllib.parse
from decimal import Decimal
from proteus import config, Model, Wizard
d = json.load(sys.stdin)
u = urllib.parse.urlsplit(d['url'])
config.set_xmlrpc('%s://%s:%s@%s/%s/' % (u.scheme, urllib.parse.quote(d['login'], safe=''), urllib.parse.quote(d['password'], safe=''), u.netloc, d['database']))
`

/**
 * A teacher's first exercise, with a real Tryton client: test/helpers/post_invoice.py (shared with
 * the native image-tool suites), after PROTEUS_CONNECT. Prints {number, state, total, untaxed,
 * company, fiscalYear, move, id}.
 */
export const POST_INVOICE = PROTEUS_CONNECT + readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'post_invoice.py'), 'utf8')

/**
 * A term of class work in one company (class_data.py: parties, products, invoices posted and paid,
 * January closed), connected as PROTEUS_CONNECT says; input adds year, invoices, parties, products.
 */
export const CLASS_DATA = PROTEUS_CONNECT + readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'class_data.py'), 'utf8')

/** What POST_INVOICE printed (its last line). */
export interface PostedInvoice {
  number: string
  state: string
  total: string
  untaxed: string
  company: string
  fiscalYear: string
}
