/**
 * `pgi db` as users run it: the bundled CLI (bin/run.js, each command its own process) against a
 * simulated lab started by `pgi lab start --backend simulated` (its daemon in its own process, the
 * PVE API over real HTTPS, the guest's pgi-db modelled by src/lab/simulated-pgidb.ts), with one
 * establishment deployed by `pgi deploy`. Every subcommand's success, and its bad input: a clear
 * error with its place, the README's exit code, and nothing changed (the database list is the
 * same after). Needs `npm run build`.
 */
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {run} from '../../../src/exec.js'
import {assertBuilt, runPgi, type PgiRun} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'

let base: string
let labDir: string
let env: NodeJS.ProcessEnv
let uai: string

const pgi = (args: string[], timeoutMs = 60_000): Promise<PgiRun> => runPgi(args, {env, cwd: base, timeoutMs})
const ok = (r: PgiRun) => expect(r.exitCode, `${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}`).toBe(0)
const names = async (): Promise<string[]> => {
  const r = await pgi(['db', 'list', uai, '--json'])
  ok(r)
  return r.json!.result.establishments[0].databases.map((d: {name: string}) => d.name)
}
/** A failure: exit code, error code, and the database list unchanged. */
async function refused(args: string[], exit: number, code: string, message: RegExp): Promise<PgiRun> {
  const before = await names()
  const r = await pgi([...args, '--json'])
  expect(r.exitCode, `${r.stderr}\n${r.stdout}`).toBe(exit)
  expect(r.json!.error!.code).toBe(code)
  expect(r.json!.error!.message).toMatch(message)
  expect(await names()).toEqual(before)
  return r
}

beforeAll(async () => {
  assertBuilt()
  base = await mkdtemp(join(tmpdir(), 'pgi-db-cli-'))
  labDir = join(base, 'lab')
  const images = join(base, 'images')
  await signedTestImage(images, 'pgi-tryton', '1.0.0')
  env = {...process.env, PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
  for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR', 'PGI_CLASS_DIR', 'PGI_TOKEN_ID', 'PGI_TOKEN_SECRET', 'PGI_YES']) delete env[k]
  ok(await pgi(['lab', 'start', '--backend', 'simulated', '--nodes', '1', '--sites', '1', '--dir', labDir, '--time-scale', '0.01', '--auth-fail-delay', '10', '--json']))
  env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
  env.PGI_SECRETS_DIR = join(labDir, 'secrets')
  uai = (await pgi(['inventory', 'list', '--json'])).json!.result[0].uai
  ok(await pgi(['deploy', uai, '--yes', '--json', '--image', '1.0.0', '--images-dir', images, '--handoff-dir', join(base, 'handoffs'), '--agent-timeout', '60', '--health-timeout', '60'], 120_000))
}, 180_000)

afterAll(async () => {
  if (labDir && existsSync(join(labDir, 'lab.json'))) await pgi(['lab', 'stop', '--dir', labDir, '--json'])
  if (base) await rm(base, {recursive: true, force: true})
}, 60_000)

describe('pgi db create, copy, list', {timeout: 240_000}, () => {
  it('create from the template and as a copy; list shows them with size, modules, kind', async () => {
    const c = await pgi(['db', 'create', uai, 'modele_cg1', '--company', 'Entreprise modèle', '--json'])
    ok(c)
    expect(c.json!.result).toMatchObject({uai, database: 'modele_cg1', from: 'template', company: 'Entreprise modèle'})
    const cp = await pgi(['db', 'copy', uai, 'modele_cg1', 'essai_cg1', '--json'])
    ok(cp)
    expect(cp.json!.result).toMatchObject({source: 'modele_cg1', database: 'essai_cg1'})
    const l = await pgi(['db', 'list', uai, '--json'])
    ok(l)
    const dbs = l.json!.result.establishments[0].databases
    expect(dbs.map((d: {name: string; kind: string}) => [d.name, d.kind])).toEqual([
      ['essai_cg1', 'copy'],
      ['modele_cg1', 'create'],
      // the establishment's declared database, made by pgi deploy
      ['pgi', 'create'],
    ])
    expect(dbs[0].modules).toContain('account_fr')
    const human = await pgi(['db', 'list', uai])
    ok(human)
    expect(human.stdout).toMatch(/modele_cg1\s*│\s*42 MB\s*│\s*create/)
    expect(human.stdout).toContain('never')
  })

  it('bad input: refused with its place and exit code, nothing changed', async () => {
    const bad = await refused(['db', 'create', uai, 'Modèle-CG'], 2, 'PGI_USAGE', /not a valid database name/)
    expect(bad.json!.error!.where).toEqual({argument: 'name'})
    await refused(['db', 'create', uai, 'pgi_tmp_x'], 2, 'PGI_USAGE', /reserved/)
    await refused(['db', 'create', uai, 'modele_cg1'], 7, 'PGI_DB_EXISTS', /modele_cg1 already exists/)
    await refused(['db', 'create', uai, 'autre', '--from', 'nulle_part'], 3, 'PGI_DB_NOT_FOUND', /nulle_part does not exist/)
    await refused(['db', 'create', uai, 'autre', '--fiscal-year', '26'], 2, 'PGI_USAGE', /--fiscal-year "26" is not a year/)
    await refused(['db', 'copy', uai, 'modele_cg1', 'essai_cg1'], 7, 'PGI_DB_EXISTS', /already exists/)
    const unknown = await refused(['db', 'copy', '0000000A', 'modele_cg1', 'x'], 2, 'PGI_UNKNOWN_ESTABLISHMENT', /0000000A/)
    expect(unknown.json!.error!.where).toEqual({uai: '0000000A'})
    await refused(['db', 'create', uai, 'tp', '--token-id', 'ami@pve!db'], 2, 'PGI_USAGE', /PGI_TOKEN_SECRET/)
  })
})

describe('pgi db class', {timeout: 240_000}, () => {
  const csv = () => join(base, 'bts-cg1.csv')

  it('per-student: one database each, names and logins from the CSV; the passwords only in the file encrypted to the AMI', async () => {
    // Windows-1252 with a header in another order, as a spreadsheet saves it
    await writeFile(csv(), Buffer.from('Classe;Prénom;Nom\r\nBTS CG1;Jean;DUPONT\r\n\r\nBTS CG1;Léa;MARTIN\r\nBTS CG1;Jean;DUPONT\r\n', 'latin1'))
    const out = join(base, 'classes')
    const r = await pgi(['db', 'class', uai, '--model', 'modele_cg1', '--students', csv(), '--out', out, '--json'])
    ok(r)
    const res = r.json!.result
    expect(res).toMatchObject({class: 'BTS CG1', mode: 'per-student', prefix: 'bts_cg1', students: 3, teacher: {login: 'professeur', created: true}})
    expect(res.databases.map((d: {name: string; students: {login: string; line: number}[]}) => [d.name, d.students[0]!.login, d.students[0]!.line])).toEqual([
      ['bts_cg1_jean_dupont', 'jean.dupont', 2],
      ['bts_cg1_jean_dupont2', 'jean.dupont2', 5],
      ['bts_cg1_lea_martin', 'lea.martin', 4],
    ])
    expect(r.stdout).not.toMatch(/password"/)
    expect(r.stdout).toContain('passwords_file')
    // the AMI opens the file with age and their key; nobody else can
    const text = (await run('age', ['--decrypt', '--identity', join(labDir, 'ami-identity.txt'), res.passwords_file])).stdout
    expect(text).toContain('Classe « BTS CG1 »')
    const rows = text.split('\n').filter((l) => /^bts_cg1_/.test(l)).map((l) => l.split(';'))
    expect(rows.map((x) => [x[0], x[1]])).toEqual([
      ['bts_cg1_jean_dupont', 'jean.dupont'],
      ['bts_cg1_jean_dupont2', 'jean.dupont2'],
      ['bts_cg1_lea_martin', 'lea.martin'],
    ])
    for (const x of rows) {
      expect(x[2]).toMatch(/^[A-Za-z0-9]{10}$/)
      expect(r.stdout + r.stderr).not.toContain(x[2])
    }
    expect(text).toMatch(/Enseignant : identifiant professeur, mot de passe [A-Za-z0-9]{12}/)
    expect((await readFile(res.passwords_file, 'utf8')).startsWith('-----BEGIN AGE ENCRYPTED FILE-----')).toBe(true)
    // people get a table without passwords
    const l = await pgi(['db', 'list', uai, '--json'])
    expect(l.json!.result.establishments[0].databases.filter((d: {kind: string}) => d.kind === 'class-student').map((d: {class: string}) => d.class)).toEqual(['BTS CG1', 'BTS CG1', 'BTS CG1'])
  })

  it('shared: one database for the class', async () => {
    await writeFile(join(base, 'groupe.csv'), 'élève\nDUPONT Jean\nMARTIN Léa Marie\n')
    const r = await pgi(['db', 'class', uai, '--model', 'modele_cg1', '--students', join(base, 'groupe.csv'), '--mode', 'shared', '--prefix', 'groupe_a', '--out', join(base, 'classes'), '--json'])
    ok(r)
    expect(r.json!.result.databases).toEqual([{name: 'groupe_a', students: expect.arrayContaining([expect.objectContaining({login: 'lea.marie.martin'})])}])
  })

  it('a CSV with bad lines: every one reported with its line, checked before the VM is asked, nothing made', async () => {
    await writeFile(join(base, 'bad.csv'), 'Nom;Prénom;Classe\nDUPONT;Jean;BTS CG1\n;Léa;BTS CG1\nMARTIN;;BTS CG1\nLEROY;Émile;BTS CG1\n')
    const r = await refused(['db', 'class', uai, '--model', 'modele_cg1', '--students', join(base, 'bad.csv')], 3, 'PGI_DB_INVALID', /2 bad lines .*line 3: nom manquant; line 4: prénom manquant/)
    expect(r.json!.error!.where).toMatchObject({file: join(base, 'bad.csv'), line: 3})
    expect(r.json!.error!.details!.rows).toEqual([
      {line: 3, message: 'nom manquant'},
      {line: 4, message: 'prénom manquant'},
    ])
    await refused(['db', 'class', uai, '--model', 'modele_cg1', '--students', join(base, 'nothing.csv')], 3, 'PGI_DB_INVALID', /no such file/)
    await writeFile(join(base, 'empty.csv'), '\n\n')
    await refused(['db', 'class', uai, '--model', 'modele_cg1', '--students', join(base, 'empty.csv')], 3, 'PGI_DB_INVALID', /line 1: the file is empty/)
  })

  it('a model that does not exist, names already taken, a bad prefix: refused, nothing made', async () => {
    await writeFile(join(base, 'one.csv'), 'Nom;Prénom;Classe\nDURAND;Paul;BTS CG2\n')
    await refused(['db', 'class', uai, '--model', 'absent', '--students', join(base, 'one.csv'), '--out', join(base, 'classes')], 3, 'PGI_DB_NOT_FOUND', /absent does not exist/)
    await refused(['db', 'class', uai, '--model', 'modele_cg1', '--students', csv(), '--out', join(base, 'classes')], 7, 'PGI_DB_EXISTS', /bts_cg1_jean_dupont/)
    await refused(['db', 'class', uai, '--model', 'modele_cg1', '--students', join(base, 'one.csv'), '--prefix', '1cg'], 2, 'PGI_USAGE', /--prefix "1cg"/)
  })
})

describe('pgi db backup, backups, drop, restore', {timeout: 240_000}, () => {
  it('backup, drop (typed confirmation or --yes, a final dump kept), restore --as and in place with --replace', async () => {
    const b = await pgi(['db', 'backup', uai, 'bts_cg1_lea_martin', '--json'])
    ok(b)
    expect(b.json!.result.backups).toEqual([expect.objectContaining({database: 'bts_cg1_lea_martin', kind: 'manual', verified: expect.objectContaining({ok: true})})])
    // no terminal and no --yes: refused before anything is asked of the VM
    await refused(['db', 'drop', uai, 'bts_cg1_lea_martin'], 2, 'PGI_FLAG_REQUIRED', /--yes/)
    const d = await pgi(['db', 'drop', uai, 'bts_cg1_lea_martin', '--yes', '--json'])
    ok(d)
    expect(d.json!.result).toMatchObject({database: 'bts_cg1_lea_martin', dropped: true, final_backup: {kind: 'final'}})
    expect(await names()).not.toContain('bts_cg1_lea_martin')
    const list = await pgi(['db', 'backups', uai, 'bts_cg1_lea_martin', '--json'])
    ok(list)
    const kinds = list.json!.result.backups.map((x: {kind: string}) => x.kind)
    expect(kinds.sort()).toEqual(['final', 'manual'])
    const human = await pgi(['db', 'backups', uai])
    expect(human.stdout).toMatch(/bts_cg1_lea_martin\s*│\s*\d{8}T\d{6}Z-final\s*│\s*final/)
    const manual = list.json!.result.backups.find((x: {kind: string}) => x.kind === 'manual')
    const r = await pgi(['db', 'restore', uai, 'bts_cg1_lea_martin', '--from', manual.id, '--as', 'lea_retour', '--json'])
    ok(r)
    expect(r.json!.result).toMatchObject({database: 'lea_retour', replaced: false, from: {id: manual.id, kind: 'manual'}})
    // latest is the final dump: restored under its own name, the database is back
    ok(await pgi(['db', 'restore', uai, 'bts_cg1_lea_martin', '--json']))
    expect(await names()).toEqual(expect.arrayContaining(['bts_cg1_lea_martin', 'lea_retour']))
    // in place: a typed confirmation, a dump of what is replaced kept
    await refused(['db', 'restore', uai, 'lea_retour', '--replace'], 2, 'PGI_FLAG_REQUIRED', /--yes/)
    ok(await pgi(['db', 'backup', uai, 'lea_retour']))
    const rep = await pgi(['db', 'restore', uai, 'lea_retour', '--replace', '--yes', '--json'])
    ok(rep)
    expect(rep.json!.result).toMatchObject({database: 'lea_retour', replaced: true, kept: {kind: 'before-replace'}})
  })

  it('bad input: no backup, unknown backup id, --as taken, --as with --replace, bad database names', async () => {
    await refused(['db', 'restore', uai, 'jamais_sauvee'], 3, 'PGI_DB_NOT_FOUND', /no backup of jamais_sauvee/)
    await refused(['db', 'restore', uai, 'lea_retour', '--from', '20200101T000000Z-manual'], 3, 'PGI_DB_NOT_FOUND', /no backup 20200101T000000Z-manual/)
    await refused(['db', 'restore', uai, 'lea_retour', '--from', 'yesterday'], 2, 'PGI_USAGE', /--from "yesterday" is not a backup id/)
    await refused(['db', 'restore', uai, 'lea_retour', '--as', 'modele_cg1'], 7, 'PGI_DB_EXISTS', /modele_cg1 already exists/)
    await refused(['db', 'restore', uai, 'lea_retour', '--as', 'x', '--replace'], 2, 'PGI_USAGE', /cannot also be provided|--replace|--as/)
    await refused(['db', 'backup', uai, 'Pas-Bon'], 2, 'PGI_USAGE', /not a valid database name/)
    await refused(['db', 'backup', uai, 'absente'], 3, 'PGI_DB_NOT_FOUND', /absente does not exist/)
    await refused(['db', 'drop', uai, 'absente', '--yes'], 3, 'PGI_DB_NOT_FOUND', /absente does not exist/)
    await refused(['db', 'backups', uai, 'Pas-Bon'], 2, 'PGI_USAGE', /not a valid database name/)
  })
})

describe('pgi db export, import', {timeout: 240_000}, () => {
  it('export brings the dump here with its manifest; import makes a new database from it', async () => {
    const out = join(base, 'modele.dump')
    const e = await pgi(['db', 'export', uai, 'modele_cg1', '--out', out, '--json'])
    ok(e)
    const data = await readFile(out)
    expect(data.subarray(0, 5).toString()).toBe('PGDMP')
    expect(e.json!.result).toMatchObject({database: 'modele_cg1', file: out, size: data.length, tryton_series: '6.0'})
    expect(JSON.parse(await readFile(`${out}.json`, 'utf8'))).toMatchObject({database: 'modele_cg1', tryton_series: '6.0', sha256: e.json!.result.sha256})
    // refuses to overwrite it
    await refused(['db', 'export', uai, 'modele_cg1', '--out', out], 7, 'PGI_REFUSED', /exists: not overwritten/)
    const i = await pgi(['db', 'import', uai, out, '--as', 'modele_importe', '--json'])
    ok(i)
    expect(i.json!.result).toMatchObject({database: 'modele_importe', tryton_series: '6.0', sent: {bytes: data.length}})
    const dbs = (await pgi(['db', 'list', uai, '--json'])).json!.result.establishments[0].databases
    expect(dbs.find((d: {name: string}) => d.name === 'modele_importe')).toMatchObject({kind: 'import'})
  })

  it('a dump of several pieces (larger than one guest-agent call) arrives whole', async () => {
    // a dump padded past 3 file-write pieces: the guest model reads it back as the same database
    const out = join(base, 'modele.dump')
    const data = await readFile(out)
    const parsed = JSON.parse(data.subarray(5).toString())
    parsed.padding = 'x'.repeat(120_000)
    const big = join(base, 'gros.dump')
    await writeFile(big, Buffer.concat([Buffer.from('PGDMP'), Buffer.from(JSON.stringify(parsed))]))
    const i = await pgi(['db', 'import', uai, big, '--as', 'gros_import', '--json'])
    ok(i)
    expect(i.json!.result.sent.calls).toBeGreaterThanOrEqual(4)
  })

  it('bad input: not a dump, no file, name taken, another Tryton series; nothing sent or made', async () => {
    await writeFile(join(base, 'notes.sql'), 'SELECT 1;\n')
    const r = await refused(['db', 'import', uai, join(base, 'notes.sql'), '--as', 'pas_une_base'], 3, 'PGI_DB_INVALID', /not a PostgreSQL custom-format dump/)
    expect(r.json!.error!.where).toEqual({file: join(base, 'notes.sql')})
    await refused(['db', 'import', uai, join(base, 'absent.dump'), '--as', 'pas_une_base'], 3, 'PGI_DB_INVALID', /no such file/)
    await refused(['db', 'import', uai, join(base, 'modele.dump'), '--as', 'modele_cg1'], 7, 'PGI_DB_EXISTS', /already exists/)
    // a dump whose manifest says Tryton 7.0 (no pgi_meta in it): refused with the reason
    const old = JSON.parse((await readFile(join(base, 'modele.dump'))).subarray(5).toString())
    delete old.tryton_series
    await writeFile(join(base, 'autre.dump'), Buffer.concat([Buffer.from('PGDMP'), Buffer.from(JSON.stringify(old))]))
    await writeFile(join(base, 'autre.dump.json'), JSON.stringify({tryton_series: '7.0'}))
    await refused(['db', 'import', uai, join(base, 'autre.dump'), '--as', 'autre_serie'], 3, 'PGI_DB_INVALID', /comes from Tryton 7\.0; this server runs Tryton 6\.0/)
    await refused(['db', 'import', uai, join(base, 'modele.dump')], 2, 'PGI_FLAG_REQUIRED|PGI_USAGE'.split('|')[1]!, /--as|Missing required flag/)
    await refused(['db', 'export', uai, 'absente', '--out', join(base, 'absente.dump')], 3, 'PGI_DB_NOT_FOUND', /absente does not exist/)
    expect(existsSync(join(base, 'absente.dump'))).toBe(false)
  })
})

describe('a data disk that would pass 90 %', {timeout: 240_000}, () => {
  it('a class too large for the disk is refused before it starts, with the figures (exit 7)', async () => {
    const rows = ['Nom;Prénom;Classe', ...Array.from({length: 300}, (_, i) => `ELEVE${i};Prénom${i};BTS GROS`)]
    await writeFile(join(base, 'gros.csv'), rows.join('\n'))
    const r = await refused(['db', 'class', uai, '--model', 'modele_cg1', '--students', join(base, 'gros.csv'), '--out', join(base, 'classes')], 7, 'PGI_DB_NO_ROOM', /not enough room on the data disk .*limit 90 %/)
    expect(r.json!.error!.details!.guest).toMatchObject({code: 'no_space', limit_pct: 90})
  })
})
