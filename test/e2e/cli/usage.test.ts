/**
 * Command-line mistakes through the built CLI (bin/run.js): a mistyped command gets "did you mean"
 * and, under --json, the envelope; a missing argument is named; every usage error says where
 * (the command, flag or argument at fault); --help shows machine-dependent defaults as
 * `<state dir>/…`, never the paths of the machine that built pgi. Needs `npm run build`.
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {assertBuilt, ROOT, runPgi} from '../../helpers/cli.js'

let tmp: string
let env: NodeJS.ProcessEnv

beforeAll(async () => {
  assertBuilt()
  tmp = await mkdtemp(join(tmpdir(), 'pgi-usage-'))
  env = {...process.env, HOME: join(tmp, 'home'), PGI_STATE_DIR: join(tmp, 'state'), CI: 'true'}
  delete env.PGI_INVENTORY
  delete env.PGI_SECRETS_DIR
  delete env.PGI_IMAGES_DIR
  delete env.XDG_STATE_HOME
})
afterAll(async () => {
  await rm(tmp, {recursive: true, force: true})
})

describe('a mistyped command', () => {
  it.each([
    [['statsu'], 'statsu', 'status'],
    [['rollout', 'strat'], 'rollout strat', 'rollout start'],
    [['inventory', 'valdate'], 'inventory valdate', 'inventory validate'],
  ])('%j: exit 2, says what was meant', async (argv, typed, meant) => {
    const r = await runPgi(argv, {env})
    expect(r.exitCode).toBe(2)
    expect(r.stderr).toContain(`"${typed}" is not a pgi command`)
    expect(r.stderr).toContain(`Did you mean \`pgi ${meant}\``)
    expect(r.stdout).toBe('')
  })

  it('under --json: the error envelope on stdout, with where and the suggestion', async () => {
    const r = await runPgi(['rollout', 'strat', '2026.12.0', '--all', '--json'], {env})
    expect(r.exitCode).toBe(2)
    expect(r.json).toMatchObject({status: 2, error: {code: 'PGI_USAGE', where: {command: 'rollout strat'}, details: {didYouMean: ['rollout start']}}})
    expect(r.json!.error!.suggestions[0]).toContain('`pgi rollout start`')
    const s = await runPgi(['statsu', '--json'], {env})
    expect(s.json).toMatchObject({status: 2, error: {code: 'PGI_USAGE', where: {command: 'statsu'}, details: {didYouMean: ['status']}}})
  })

  it('far from every command: no guess, but where to look', async () => {
    const r = await runPgi(['frobnicate', '--json'], {env})
    expect(r.exitCode).toBe(2)
    expect(r.json!.error!.details).toBeUndefined()
    expect(r.json!.error!.suggestions).toEqual(['See `pgi --help` for the commands.'])
  })
})

describe('usage errors name what is at fault', () => {
  it('a missing required argument is named, with its description', async () => {
    const r = await runPgi(['credentials', 'open', '--json'], {env})
    expect(r.exitCode).toBe(2)
    expect(r.json!.error).toMatchObject({code: 'PGI_USAGE', where: {argument: 'file'}})
    expect(r.json!.error!.message).toMatch(/^missing required argument: FILE \(The handoff file/)
    const human = await runPgi(['rollout', 'start', '--all'], {env})
    expect(human.exitCode).toBe(2)
    expect(human.stderr).toMatch(/^Error \[PGI_USAGE\] at argument version: missing required argument: VERSION \(Image version to roll out/)
  })

  it.each([
    [['deploy', '--bwlimit', 'abc'], {flag: 'bwlimit'}, /is not a rate/],
    [['deploy', '--image', 'bad!ref'], {flag: 'image'}, /"bad!ref" is not an image version/],
    [['rollout', 'start', 'pgi@@1', '--all'], {argument: 'version'}, /"pgi@@1" is not an image version/],
    [['status', '--format', 'xml'], {flag: 'format'}, /Expected --format=xml to be one of/],
    [['status', '--output', 'x.prom'], {flag: 'output'}, /--output is for --format prometheus/],
    [['deploy', '--max-parallel', 'many'], {flag: 'max-parallel'}, /Expected an integer/],
    [['inventory', 'validate', 'extra', 'args'], {command: 'inventory validate', argument: 'extra,args'}, /unexpected arguments: extra, args/],
    [['credentials', 'open', 'a.age', 'b.age'], {argument: 'b.age'}, /unexpected argument: b.age/],
  ])('%j', async (argv, where, message) => {
    const r = await runPgi([...argv, '--json'], {env})
    expect(r.exitCode).toBe(2)
    expect(r.json!.status).toBe(2)
    expect(r.json!.error!.code).toBe('PGI_USAGE')
    expect(r.json!.error!.where).toEqual(where)
    expect(r.json!.error!.message).toMatch(message)
  })

  it('an unknown flag: the closest one is suggested', async () => {
    const r = await runPgi(['deploy', '--imag', '2026.12.0', '--json'], {env})
    expect(r.exitCode).toBe(2)
    expect(r.json!.error).toMatchObject({where: {flag: 'imag'}, message: 'unknown flag: --imag'})
    expect(r.json!.error!.suggestions[0]).toBe('Did you mean --image?')
    const human = await runPgi(['deploy', '--imag', '2026.12.0'], {env})
    expect(human.stderr).toMatch(/^Error \[PGI_USAGE\] at --imag: unknown flag: --imag\n {2}→ Did you mean --image\?/)
  })

  it("a flag's bad value: named once for people, in the message too in JSON", async () => {
    const human = await runPgi(['deploy', '0130040Y', '--health-timeout', 'abc'], {env})
    expect(human.exitCode).toBe(2)
    expect(human.stderr).toMatch(/^Error \[PGI_USAGE\] at --health-timeout: "abc" is not a duration/)
    const json = await runPgi(['deploy', '0130040Y', '--health-timeout', 'abc', '--json'], {env})
    expect(json.json!.error).toMatchObject({where: {flag: 'health-timeout'}})
    expect(json.json!.error!.message).toMatch(/^--health-timeout: "abc" is not a duration/)
  })
})

describe('--help', () => {
  const home = process.env.HOME ?? '/root'
  it.each([['deploy'], ['status'], ['rollout', 'start'], ['credentials', 'list'], ['credentials', 'rotate'], ['image', 'build'], ['inventory', 'validate']])(
    '%j shows <state dir> defaults, not the build machine\'s paths',
    async (...cmd) => {
      const r = await runPgi([...cmd, '--help'], {env})
      expect(r.exitCode).toBe(0)
      expect(r.stdout).not.toContain(`${home}/`)
      expect(r.stdout).not.toContain(ROOT)
      expect(r.stdout).not.toContain(tmp)
      if (r.stdout.includes('--secrets-dir')) expect(r.stdout).toContain('default: <state dir>/secrets')
      if (r.stdout.includes('--images-dir')) expect(r.stdout).toContain('default: <state dir>/images')
      if (r.stdout.includes('--inventory')) expect(r.stdout).toContain('default: ./inventory')
    },
  )

  it('oclif.manifest.json holds no absolute default (it is written at build time)', async () => {
    const manifest = JSON.parse(await readFile(join(ROOT, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {flags: Record<string, {default?: unknown}>}>}
    const absolute = Object.entries(manifest.commands).flatMap(([id, c]) => Object.entries(c.flags).filter(([, f]) => typeof f.default === 'string' && f.default.startsWith('/')).map(([n, f]) => `${id} --${n}: ${String(f.default)}`))
    expect(absolute).toEqual([])
  })

  it('the defaults still follow PGI_STATE_DIR when the command runs', async () => {
    const dir = join(tmp, 'state', 'handoffs')
    await mkdir(dir, {recursive: true})
    await writeFile(join(dir, '0130040Y.handoff.age'), 'not read: only its name and date are')
    const r = await runPgi(['credentials', 'list', '0130040Y', '-i', join(ROOT, 'inventory', 'example'), '--json'], {env})
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.json!.result[0].handoff.file).toBe(join(dir, '0130040Y.handoff.age'))
  })
})
