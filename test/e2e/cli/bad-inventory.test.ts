/**
 * Bad inventories through the built CLI (`bin/run.js`, the esbuild bundle users run), each with
 * bounds measured by /usr/bin/time: ≤ 5 s wall and ≤ 300 MB resident memory per run. The corpus
 * (test/helpers/bad-inventories.ts) runs through `pgi inventory validate`; some cases also through
 * `inventory list`, `deploy --dry-run`, `status` and with --json; and a few random mutations of
 * the example (test/helpers/inventory-mutations.ts). Every run: the expected exit code (3, or 0
 * with a warning where the input is acceptable), one `file:line:column  rule  message` line per
 * problem, never PGI_INTERNAL nor a stack trace, never a secret.
 *
 * In the e2e project, not the unit one: it needs `npm run build` (the unit project runs from the
 * sources, unbuilt), and it starts ~100 Node processes (~40 s on the 2-core machine); the same
 * corpus runs through the loader in the unit project (test/unit/inventory/bad-corpus.test.ts).
 */
import {spawn} from 'node:child_process'
import {chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync} from 'node:fs'
import {access, mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

import fc from 'fast-check'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {CORPUS, SECRET_UUID, type BadInventory, type Expectation} from '../../helpers/bad-inventories.js'
import {FILES, mutate, mutations} from '../../helpers/inventory-mutations.js'

const root = resolve(import.meta.dirname, '../../..')
const RUN = join(root, 'bin', 'run.js')
const TIME = '/usr/bin/time'
const MAX_WALL_S = 5
const MAX_RSS_KB = 300 * 1024
/** Root reads any file: the EACCES cases run with root's permission override dropped. */
const DROP_DAC = process.getuid?.() === 0 ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--inh-caps=-all'] : []

let tmp: string
let stateDir: string

beforeAll(async () => {
  await access(join(root, 'dist', 'cli', 'commands.js')).catch(() => {
    throw new Error('the CLI is not built: run `npm run build` first')
  })
  await access(TIME).catch(() => {
    throw new Error(`${TIME} is missing: it measures each run's memory (Debian package "time"; scripts/install-deps.sh installs it)`)
  })
  tmp = await mkdtemp(join(tmpdir(), 'pgi-bad-cli-'))
  stateDir = await mkdtemp(join(tmpdir(), 'pgi-bad-cli-state-'))
})

afterAll(async () => {
  if (measures.length > 0) {
    const wall = measures.reduce((a, b) => (b.wallS > a.wallS ? b : a))
    const rss = measures.reduce((a, b) => (b.rssKb > a.rssKb ? b : a))
    console.log(`bad inventories: ${measures.length} runs of bin/run.js; max wall ${wall.wallS} s (${wall.args}); max RSS ${Math.round(rss.rssKb / 1024)} MB (${rss.args})`)
  }
  // the EACCES cases leave mode-000 entries: make them removable
  const open = (d: string): void => {
    for (const e of readdirSync(d, {withFileTypes: true})) {
      const p = join(d, e.name)
      if (e.isDirectory()) {
        chmodSync(p, 0o700)
        open(p)
      }
    }
  }
  if (tmp) open(tmp)
  await rm(tmp, {recursive: true, force: true})
  await rm(stateDir, {recursive: true, force: true})
})

interface Run {
  code: number | null
  stdout: string
  stderr: string
  wallS: number
  rssKb: number
}

let runs = 0
/** Every run's measures, printed at the end (the bounds are asserted per run). */
const measures: {args: string; wallS: number; rssKb: number}[] = []
/** Runs `pgi ARGS` in `cwd` under /usr/bin/time; kills it after 20 s (a hung run fails its bounds instead of the whole suite hanging). */
function pgi(cwd: string, args: string[], opts: {dropDac?: boolean} = {}): Promise<Run> {
  const timeFile = join(tmp, `time-${runs++}`)
  const argv = ['-f', '%e %M', '-o', timeFile, ...(opts.dropDac ? DROP_DAC : []), process.execPath, RUN, ...args]
  return new Promise((done, fail) => {
    const child = spawn(TIME, argv, {
      cwd,
      env: {...process.env, CI: 'true', NO_COLOR: '1', PGI_STATE_DIR: stateDir, PGI_INVENTORY: '', PGI_TOKEN_HV_MARSEILLE: 'not-used'},
      stdio: ['ignore', 'pipe', 'pipe'],
      // its own process group: a hung run is killed with /usr/bin/time (pgi is its child)
      detached: true,
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()))
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
    const killer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 20_000)
    child.on('error', fail)
    child.on('close', (code) => {
      clearTimeout(killer)
      // /usr/bin/time writes "Command exited with non-zero status N" first, then the format line
      let last = ''
      try {
        last = readFileSync(timeFile, 'utf8').trim().split('\n').at(-1) ?? ''
      } catch {
        // killed before /usr/bin/time wrote its measures
      }
      const [wall, rss] = last === '' ? [Infinity, Infinity] : last.split(' ').map(Number)
      measures.push({args: expect.getState().currentTestName ?? args.join(' '), wallS: wall ?? Infinity, rssKb: rss ?? Infinity})
      done({code, stdout, stderr, wallS: wall ?? Infinity, rssKb: rss ?? Infinity})
    })
  })
}

const LOCATED = /^(.+):(\d+):(\d+) {2}([a-z0-9]+(?:-[a-z0-9]+)*) {2}(warning: )?\S/
const SUMMARY = /^(.+): (\d+) files?, \d+ hypervisors?, \d+ establishments?, \d+ groups?: (?:valid|(\d+) errors?)(?:, (\d+) warnings?)?$/

/** What every run must show, whatever the command: bounds, no internal error, no stack, no secret. */
function checkSane(r: Run, secret?: string): void {
  const all = r.stdout + r.stderr
  expect(r.wallS, `wall time ${r.wallS} s`).toBeLessThanOrEqual(MAX_WALL_S)
  expect(r.rssKb, `max RSS ${r.rssKb} KB`).toBeLessThanOrEqual(MAX_RSS_KB)
  expect(all).not.toContain('PGI_INTERNAL')
  expect(all).not.toMatch(/^\s+at .+[:(]\d+:\d+\)?$/m)
  expect(all).not.toMatch(/\b(TypeError|RangeError|SyntaxError|ReferenceError)\b/)
  expect(all).not.toContain(SECRET_UUID)
  if (secret) expect(all).not.toContain(secret)
}

/** `pgi inventory validate`'s text output: one located line per problem, then the summary. */
function checkValidate(r: Run, c: Expectation, input: string): void {
  checkSane(r, c.secret)
  expect(r.code, r.stdout + r.stderr).toBe(c.exit)
  const lines = r.stdout.trimEnd().split('\n')
  const summary = SUMMARY.exec(lines.at(-1) ?? '')
  expect(summary, `summary line: ${lines.at(-1)}`).not.toBeNull()
  expect(summary![1]).toBe(input)
  const located = lines.slice(0, -1)
  const parsed = located.map((l) => LOCATED.exec(l))
  for (const [i, m] of parsed.entries()) expect(m, `a located problem line: ${located[i]}`).not.toBeNull()
  const errors = parsed.filter((m) => !m![5]).length
  const warnings = parsed.length - errors
  expect(errors).toBe(Number(summary![3] ?? 0))
  expect(warnings).toBe(Number(summary![4] ?? 0))
  const rules = parsed.filter((m) => (c.exit === 3 ? !m![5] : true)).map((m) => m![4])
  for (const rule of c.rules) expect(rules, r.stdout).toContain(rule)
  if (c.exit === 0 && c.rules.length === 0) expect(located).toEqual([])
  if (c.at) {
    const first = parsed.find((m) => m![4] === c.rules[0])!
    expect({file: first[1], line: Number(first[2]), column: Number(first[3])}).toEqual(c.at)
  }
  if (c.exit === 3) expect(r.stderr).toMatch(/^Error \[PGI_INVENTORY_INVALID\] at .+:\d+:\d+: inventory .+ is invalid: \d+ errors?/)
}

/** A fresh folder with the case written in it; returns it and the -i path. */
function setUp(c: BadInventory): {dir: string; input: string} {
  const dir = join(tmp, `case-${runs++}`)
  mkdirSync(dir, {recursive: true})
  return {dir, input: c.make(dir)}
}

/** The example's hypervisor URLs pointed at a closed loopback port: runs never leave the machine. */
function loopback(dir: string): void {
  const f = join(dir, 'inv', 'hypervisors.yaml')
  try {
    const text = readFileSync(f, 'latin1')
    writeFileSync(f, text.replaceAll('192.0.2.10', '127.0.0.1').replaceAll('198.51.100.20', '127.0.0.1').replaceAll(':8006', ':9'), 'latin1')
  } catch {
    // a case where hypervisors.yaml is not a readable file: nothing to point anywhere
  }
}

describe('bad inventories through bin/run.js', () => {
  it('has a corpus of at least 40 cases', () => {
    expect(CORPUS.length).toBeGreaterThanOrEqual(40)
  })

  it.each(CORPUS.map((c) => [c.name, c] as const))('inventory validate: %s', async (_name, c) => {
    const {dir, input} = setUp(c)
    checkValidate(await pgi(dir, ['inventory', 'validate', '-i', input], {dropDac: c.unreadable}), c, input)
  })

  const OTHER_COMMANDS = ['Latin-1 file', 'a FIFO named *.yaml in the folder', 'token.id written with its secret (USER@REALM!ID=SECRET)', 'unclosed flow sequence', 'an inventory file linked to /dev/zero', 'tls.ca_file is /dev/zero', 'alias bomb ("billion laughs")']
  const others = CORPUS.filter((c) => OTHER_COMMANDS.includes(c.name))
  it('picks the cases for the other commands', () => expect(others.length).toBe(OTHER_COMMANDS.length))

  for (const [label, args] of [
    ['inventory list', ['inventory', 'list']],
    ['deploy --dry-run --all', ['deploy', '--dry-run', '--all']],
    ['status', ['status']],
  ] as const) {
    it.each(others.map((c) => [c.name, c] as const))(`${label}: %s`, async (_name, c) => {
      const {dir, input} = setUp(c)
      loopback(dir)
      const r = await pgi(dir, [...args, '-i', input])
      checkSane(r, c.secret)
      expect(r.code, r.stdout + r.stderr).toBe(3)
      expect(r.stderr).toMatch(/^Error \[PGI_INVENTORY_INVALID\] at .+:\d+:\d+: inventory .+ is invalid/)
      if (c.at) expect(r.stderr).toContain(`at ${c.at.file}:${c.at.line}:${c.at.column}:`)
      // the first problems are listed, located, under the error
      expect(r.stderr).toMatch(/→ .+:\d+:\d+ {2}[a-z0-9-]+ {2}/)
    })
  }

  const JSON_CASES = [...OTHER_COMMANDS, 'multi-document file', 'UTF-8 byte-order mark (acceptable)', 'empty file beside the others (acceptable)', 'a file over the size limit']
  it.each(CORPUS.filter((c) => JSON_CASES.includes(c.name)).map((c) => [c.name, c] as const))('inventory validate --json: %s', async (_name, c) => {
    const {dir, input} = setUp(c)
    const r = await pgi(dir, ['inventory', 'validate', '-i', input, '--json'])
    checkSane(r, c.secret)
    expect(r.code).toBe(c.exit)
    const out = JSON.parse(r.stdout) as {status: number; result?: {valid: boolean; problems: Problem[]}; error?: {code: string; where: {file: string; line: number; column: number}; details: {problems: Problem[]}}}
    expect(out.status).toBe(c.exit)
    const problems = c.exit === 3 ? out.error!.details.problems : out.result!.problems
    if (c.exit === 3) {
      expect(out.error!.code).toBe('PGI_INVENTORY_INVALID')
      const first = problems.find((p) => p.severity === 'error')!
      expect(out.error!.where).toEqual({file: first.file, line: first.line, column: first.column})
    } else expect(out.result!.valid).toBe(true)
    for (const p of problems) {
      expect(p.line).toBeGreaterThanOrEqual(1)
      expect(p.column).toBeGreaterThanOrEqual(1)
      expect(typeof p.rule).toBe('string')
    }
    for (const rule of c.rules) expect(problems.map((p) => p.rule)).toContain(rule)
    if (c.at) expect(problems.find((p) => p.rule === c.rules[0])).toMatchObject(c.at)
  })

  it('random mutations of the example: exit 0 or 3, located problems, never internal', async () => {
    // a few through the CLI (the loader takes hundreds in the unit project)
    const samples = fc.sample(mutations, {numRuns: 12, ...(process.env.PGI_FUZZ_SEED ? {seed: Number(process.env.PGI_FUZZ_SEED)} : {})})
    for (const ms of samples) {
      const dir = join(tmp, `mutant-${runs++}`)
      mkdirSync(join(dir, 'inv', 'ca'), {recursive: true})
      writeFileSync(join(dir, 'inv', 'ca', 'avignon-ca.pem'), readFileSync(join(root, 'inventory', 'example', 'ca', 'avignon-ca.pem')))
      const m = mutate(ms)
      for (const f of FILES) writeFileSync(join(dir, 'inv', f), m[f])
      const r = await pgi(dir, ['inventory', 'validate', '-i', 'inv'])
      const why = `mutations ${JSON.stringify(ms)}:\n${r.stdout}${r.stderr}`
      expect([0, 3], why).toContain(r.code)
      checkSane(r)
      const lines = r.stdout.trimEnd().split('\n')
      expect(lines.at(-1), why).toMatch(SUMMARY)
      for (const l of lines.slice(0, -1)) expect(l, why).toMatch(LOCATED)
    }
  }, 120_000)
})

interface Problem {
  file: string
  line: number
  column: number
  rule: string
  message: string
  severity: string
}
