/**
 * `pgi db teacher …`, `pgi db audit` and the handoff's console section as users run them: the
 * bundled CLI (bin/run.js, each command its own process) against a simulated lab (`pgi lab start
 * --backend simulated`; the guest's pgi-console and pgi-tls record modelled by
 * src/lab/simulated-console.ts), with one establishment deployed by `pgi deploy`. Success, where
 * the one-time code goes (never in a log or an error; a file encrypted to the AMI without a
 * terminal; the output only with --show-code), and bad input: a clear error with its place, the
 * README's exit code, nothing changed. Needs `npm run build`.
 */
import {existsSync} from 'node:fs'
import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {run} from '../../../src/exec.js'
import {assertBuilt, CLI, runPgi, type PgiRun} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'

let base: string
let labDir: string
let env: NodeJS.ProcessEnv
let uai: string
let address: string
const codes: string[] = []

const pgi = (args: string[], timeoutMs = 60_000, extra: NodeJS.ProcessEnv = {}): Promise<PgiRun> => runPgi(args, {env: {...env, ...extra}, cwd: base, timeoutMs})
const ok = (r: PgiRun) => expect(r.exitCode, `${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}`).toBe(0)
const teachers = async (): Promise<{email: string; status: string}[]> => {
  const r = await pgi(['db', 'teacher', 'list', uai, '--json'])
  ok(r)
  return r.json!.result.teachers
}
/** A failure: exit code, error code, place, and the accounts unchanged. */
async function refused(args: string[], exit: number, code: string, message: RegExp, where?: Record<string, unknown>): Promise<PgiRun> {
  const before = await teachers()
  const r = await pgi([...args, '--json'])
  expect(r.exitCode, `${r.stderr}\n${r.stdout}`).toBe(exit)
  expect(r.json!.error!.code).toBe(code)
  expect(r.json!.error!.message).toMatch(message)
  if (where) expect(r.json!.error!.where).toMatchObject(where)
  expect(await teachers()).toEqual(before)
  return r
}
const decrypt = async (file: string): Promise<string> => (await run('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), file])).stdout
const CODE_RE = /\b[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}\b/

beforeAll(async () => {
  assertBuilt()
  base = await mkdtemp(join(tmpdir(), 'pgi-teacher-cli-'))
  labDir = join(base, 'lab')
  const images = join(base, 'images')
  await signedTestImage(images, 'pgi-tryton', '1.0.0')
  env = {...process.env, PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'debug'}
  for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR', 'PGI_CLASS_DIR', 'PGI_TEACHER_DIR', 'PGI_CONSOLE_URL', 'PGI_TOKEN_ID', 'PGI_TOKEN_SECRET', 'PGI_YES']) delete env[k]
  ok(await pgi(['lab', 'start', '--backend', 'simulated', '--nodes', '1', '--sites', '1', '--dir', labDir, '--time-scale', '0.01', '--auth-fail-delay', '10', '--json']))
  env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
  env.PGI_SECRETS_DIR = join(labDir, 'secrets')
  const est = (await pgi(['inventory', 'list', '--json'])).json!.result[0]
  uai = est.uai
  ok(await pgi(['deploy', uai, '--yes', '--json', '--image', '1.0.0', '--images-dir', images, '--handoff-dir', join(base, 'handoffs'), '--agent-timeout', '60', '--health-timeout', '60'], 120_000))
  const show = await pgi(['inventory', 'show', uai, '--json'])
  address = String(show.json!.result.network?.address ?? show.json!.result.establishment?.network?.address ?? '').split('/')[0]!
}, 180_000)

afterAll(async () => {
  if (labDir && existsSync(join(labDir, 'lab.json'))) await pgi(['lab', 'stop', '--dir', labDir, '--json'])
  if (base) await rm(base, {recursive: true, force: true})
}, 60_000)

describe('pgi db teacher', {timeout: 240_000}, () => {
  it('add without a terminal: the code never printed nor logged, in a file only the AMI opens', async () => {
    const out = join(base, 'codes')
    const r = await pgi(['db', 'teacher', 'add', uai, '--name', '  Marie Curie ', '--email', 'Marie.Curie@ac-aix-marseille.fr', '--out', out, '--json'])
    ok(r)
    const res = r.json!.result
    expect(res).toMatchObject({uai, setup_code_to: 'file', teacher: {email: 'marie.curie@ac-aix-marseille.fr', name: 'Marie Curie', status: 'pending', tryton_login: 'prof.marie.curie', created_by: 'cli:root'}})
    expect(res.setup_code).toBeUndefined()
    expect(res.teacher.setup_code_expires).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    expect(res.setup_url).toMatch(/^https:\/\/[^/]+\/console\/activer\?email=marie\.curie%40ac-aix-marseille\.fr$/)
    if (address) expect(res.setup_url).toContain(`https://${address}/console/`)
    expect(res.setup_code_file.startsWith(out)).toBe(true)
    expect(await readdir(out)).toEqual([res.setup_code_file.slice(out.length + 1)])
    const text = await decrypt(res.setup_code_file)
    const code = CODE_RE.exec(text)?.[0]
    expect(code, text).toBeDefined()
    expect(text).toContain(res.setup_url)
    codes.push(code!)
    // debug logging on: the code is nowhere in what the command printed
    expect(r.stdout + r.stderr).not.toContain(code)
    expect(r.stdout + r.stderr).not.toMatch(CODE_RE)
  })

  it('add --show-code: the code in the JSON result, for a script that hands it on', async () => {
    const r = await pgi(['db', 'teacher', 'add', uai, '--name', 'Paul Langevin', '--email', 'paul.langevin@ac-aix-marseille.fr', '--show-code', '--console-url', 'https://127.0.0.1:8443/console', '--json'])
    ok(r)
    expect(r.json!.result).toMatchObject({setup_code_to: 'output', setup_url: 'https://127.0.0.1:8443/console/activer?email=paul.langevin%40ac-aix-marseille.fr'})
    expect(r.json!.result.setup_code).toMatch(new RegExp(`^${CODE_RE.source.replace(/\\b/g, '')}$`))
    expect(r.json!.result.setup_code_file).toBeUndefined()
    expect(codes).not.toContain(r.json!.result.setup_code)
    codes.push(r.json!.result.setup_code)
    // without --json, on stdout (asked for), never on stderr (the log)
    const human = await pgi(['db', 'teacher', 'add', uai, '--name', 'Irène Joliot-Curie', '--email', 'irene.joliot@ac-aix-marseille.fr', '--show-code'])
    ok(human)
    expect(human.stdout).toMatch(new RegExp(`One-time code : ${CODE_RE.source}`))
    expect(human.stderr).not.toMatch(CODE_RE)
  })

  it('add on a terminal: the code shown there once, no file written', async () => {
    // a real pseudo-terminal (util-linux script(1)), an interactive run (no CI variable)
    const out = join(base, 'codes-tty')
    const ttyEnv: NodeJS.ProcessEnv = {...env, CI: '0'}
    const cmd = [process.execPath, CLI, 'db', 'teacher', 'add', uai, '--name', 'Jean Perrin', '--email', 'jean.perrin@ac-aix-marseille.fr', '--out', out].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
    const r = await run('script', ['-qefc', cmd, '/dev/null'], {env: ttyEnv, cwd: base, timeoutMs: 60_000})
    expect(r.exitCode, r.stdout).toBe(0)
    const code = new RegExp(`One-time code : (${CODE_RE.source})`).exec(r.stdout)?.[1]
    expect(code, r.stdout).toBeDefined()
    expect(r.stdout).toContain('https://')
    expect(r.stdout).toContain('/console/activer?email=jean.perrin%40ac-aix-marseille.fr')
    expect(existsSync(out) ? await readdir(out) : []).toEqual([])
    codes.push(code!)
  })

  it('list: every account, never a hash or a code', async () => {
    const r = await pgi(['db', 'teacher', 'list', uai, '--json'])
    ok(r)
    expect(r.json!.result.teachers.map((t: {email: string; status: string}) => [t.email, t.status])).toEqual([
      ['irene.joliot@ac-aix-marseille.fr', 'pending'],
      ['jean.perrin@ac-aix-marseille.fr', 'pending'],
      ['marie.curie@ac-aix-marseille.fr', 'pending'],
      ['paul.langevin@ac-aix-marseille.fr', 'pending'],
    ])
    expect(r.stdout).not.toMatch(/hash|argon/i)
    for (const c of codes) expect(r.stdout).not.toContain(c)
    const human = await pgi(['db', 'teacher', 'list', uai])
    ok(human)
    expect(human.stdout).toMatch(/marie\.curie@ac-aix-marseille\.fr\s*│\s*Marie Curie\s*│\s*pending \(code until \d{4}-/)
  })

  it('disable, enable, reset: the account changes, a reset gives a new code', async () => {
    const d = await pgi(['db', 'teacher', 'disable', uai, 'PAUL.LANGEVIN@ac-aix-marseille.fr', '--json'])
    ok(d)
    expect(d.json!.result.teacher).toMatchObject({email: 'paul.langevin@ac-aix-marseille.fr', status: 'disabled', setup_code_expires: null})
    const e = await pgi(['db', 'teacher', 'enable', uai, 'paul.langevin@ac-aix-marseille.fr'])
    ok(e)
    expect(e.stdout).toContain('paul.langevin@ac-aix-marseille.fr is now pending')
    // a reset asks for a confirmation: without a terminal, --yes
    const noYes = await pgi(['db', 'teacher', 'reset', uai, 'marie.curie@ac-aix-marseille.fr', '--json'])
    expect(noYes.exitCode).toBe(2)
    expect(noYes.json!.error!.message).toMatch(/--yes/)
    const r = await pgi(['db', 'teacher', 'reset', uai, 'marie.curie@ac-aix-marseille.fr', '--yes', '--show-code', '--json'])
    ok(r)
    expect(r.json!.result.teacher.status).toBe('pending')
    expect(codes).not.toContain(r.json!.result.setup_code)
  })

  it('bad input: refused with its place and exit code, nothing changed', async () => {
    await refused(['db', 'teacher', 'add', uai, '--name', 'Marie Curie', '--email', 'marie.curie@ac-aix-marseille.fr'], 7, 'PGI_TEACHER_EXISTS', /un compte existe déjà pour marie\.curie@/, {uai})
    await refused(['db', 'teacher', 'add', uai, '--name', 'X', '--email', 'pas-une-adresse'], 2, 'PGI_USAGE', /"pas-une-adresse" is not an e-mail address/, {flag: 'email'})
    await refused(['db', 'teacher', 'add', uai, '--name', 'X', '--email', 'a..b@ac-x.fr'], 2, 'PGI_USAGE', /not an e-mail address/, {flag: 'email'})
    await refused(['db', 'teacher', 'add', uai, '--name', 'Ma\u0007rie', '--email', 'x@ac-x.fr'], 2, 'PGI_USAGE', /--name: .*printable/, {flag: 'name'})
    await refused(['db', 'teacher', 'add', uai, '--name', '   ', '--email', 'x@ac-x.fr'], 2, 'PGI_USAGE', /--name/, {flag: 'name'})
    await refused(['db', 'teacher', 'add', uai, '--name', 'X'.repeat(121), '--email', 'x@ac-x.fr'], 2, 'PGI_USAGE', /1 to 120/, {flag: 'name'})
    await refused(['db', 'teacher', 'add', uai, '--email', 'x@ac-x.fr'], 2, 'PGI_USAGE', /name/)
    await refused(['db', 'teacher', 'add', uai, '--name', 'X', '--email', 'x@ac-x.fr', '--console-url', 'http://127.0.0.1/console/'], 2, 'PGI_USAGE', /https:\/\//, {flag: 'console-url'})
    await refused(['db', 'teacher', 'disable', uai, 'nobody@ac-x.fr'], 3, 'PGI_TEACHER_NOT_FOUND', /aucun compte enseignant nobody@ac-x\.fr/, {uai})
    await refused(['db', 'teacher', 'reset', uai, 'nobody@ac-x.fr', '--yes'], 3, 'PGI_TEACHER_NOT_FOUND', /aucun compte/)
    await refused(['db', 'teacher', 'enable', uai, 'not-an-address'], 2, 'PGI_USAGE', /not an e-mail address/, {argument: 'email'})
    await refused(['db', 'teacher', 'list', '0000000A'], 2, 'PGI_UNKNOWN_ESTABLISHMENT', /0000000A/, {uai: '0000000A'})
    // a code file that cannot be written: refused before the VM is asked (the AMI's key and the folder are checked first)
    await refused(['db', 'teacher', 'add', uai, '--name', 'X', '--email', 'x@ac-x.fr', '--out', '/proc/pgi-no'], 2, 'PGI_USAGE', /cannot write .*\/proc\/pgi-no/, {flag: 'out'})
  })
})

describe('pgi db audit', {timeout: 120_000}, () => {
  it("prints the console's audit log, newest first, filtered by date and actor", async () => {
    const r = await pgi(['db', 'audit', uai, '--json'])
    ok(r)
    const entries = r.json!.result.entries as {id: number; action: string; actor: string; target: string; result: string; at: string}[]
    expect(entries.map((e) => [e.action, e.target])).toEqual(
      expect.arrayContaining([
        ['enseignant.creer', 'marie.curie@ac-aix-marseille.fr'],
        ['enseignant.creer', 'paul.langevin@ac-aix-marseille.fr'],
        ['enseignant.desactiver', 'paul.langevin@ac-aix-marseille.fr'],
        ['enseignant.reactiver', 'paul.langevin@ac-aix-marseille.fr'],
        ['enseignant.reinitialiser', 'marie.curie@ac-aix-marseille.fr'],
      ]),
    )
    expect(entries[0]!.action).toBe('enseignant.reinitialiser')
    expect(entries.every((e) => e.actor === 'cli:root' && e.result === 'ok')).toBe(true)
    expect(entries.map((e) => e.id)).toEqual([...entries.map((e) => e.id)].sort((a, b) => b - a))
    for (const c of codes) expect(r.stdout).not.toContain(c)

    const recent = await pgi(['db', 'audit', uai, '--since', '1h', '--limit', '2', '--json'])
    ok(recent)
    expect(recent.json!.result.entries).toHaveLength(2)
    expect(recent.json!.result.since).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    const future = await pgi(['db', 'audit', uai, '--since', '2999-01-01', '--json'])
    ok(future)
    expect(future.json!.result).toMatchObject({since: '2999-01-01T00:00:00Z', entries: []})
    const zoned = await pgi(['db', 'audit', uai, '--since', '2999-01-01T02:00+02:00', '--json'])
    expect(zoned.json!.result.since).toBe('2999-01-01T00:00:00Z')
    const actor = await pgi(['db', 'audit', uai, '--actor', 'ami:pgi_admin', '--json'])
    ok(actor)
    expect(actor.json!.result.entries).toEqual([])

    const human = await pgi(['db', 'audit', uai])
    ok(human)
    expect(human.stdout).toMatch(/cli:root\s*│\s*enseignant\.reinitialiser\s*│\s*marie\.curie@ac-aix-marseille\.fr\s*│\s*ok/)
  })

  it('bad input: refused with its place and exit code', async () => {
    for (const [args, message, flag] of [
      [['--since', 'hier'], /--since "hier" is neither a date/, 'since'],
      [['--since', '2026-02-30'], /--since "2026-02-30"/, 'since'],
      [['--since', '2026-09-01T25:00'], /--since/, 'since'],
      [['--limit', '0'], /--limit "0": a whole number from 1 to 100000/, 'limit'],
      [['--limit', '1e3'], /--limit/, 'limit'],
      [['--actor', 'root; rm'], /--actor "root; rm"/, 'actor'],
    ] as const) {
      const r = await pgi(['db', 'audit', uai, ...args, '--json'])
      expect(r.exitCode, r.stdout).toBe(2)
      expect(r.json!.error).toMatchObject({code: 'PGI_USAGE', where: {flag}})
      expect(r.json!.error!.message).toMatch(message)
    }
  })
})

describe("the handoff names the console and the certificate's fingerprint", {timeout: 120_000}, () => {
  it('read from the VM at deploy; the same after a rotation (the certificate lives on the data disk)', async () => {
    const open = async () => {
      const files = (await readdir(join(base, 'handoffs'))).filter((f) => f.endsWith('.handoff.age'))
      const r = await pgi(['credentials', 'open', join(base, 'handoffs', files[0]!), '--identity', join(labDir, 'ami-identity.txt'), '--json'])
      ok(r)
      return r.json!.result
    }
    const h = await open()
    expect(h.console.url).toMatch(/^https:\/\/.+\/console\/$/)
    expect(h.console.url.startsWith(h.web_client.url)).toBe(true)
    expect(h.console.tls_sha256).toMatch(/^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/)
    const text = await pgi(['credentials', 'open', join(base, 'handoffs', (await readdir(join(base, 'handoffs'))).find((f) => f.endsWith('.handoff.age'))!), '--identity', join(labDir, 'ami-identity.txt'), '--text'])
    ok(text)
    expect(text.stdout).toContain('6. La console des enseignants')
    expect(text.stdout).toContain(h.console.tls_sha256)
    expect(text.stdout).toContain(`${h.console.url}activer`)
    ok(await pgi(['credentials', 'rotate', uai, '--yes', '--out', join(base, 'handoffs'), '--json'], 120_000))
    const after = await open()
    expect(after.console).toEqual(h.console)
  })
})
