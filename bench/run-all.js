#!/usr/bin/env node
// bench/run-all (`npm run bench`, which builds first): runs every benchmark of this folder
// (bench/*.mjs), one after the other — they measure time and must not share the machine with each
// other —, each with its own defaults. Prints one JSON line per benchmark as it ends:
//   {"bench":"startup","ok":true,"exitCode":0,"wallMs":8123,"result":{…its last line…}}
// (`ok` is the benchmark's own verdict when its last line has one, else whether it exited 0;
// `skipped` with the reason when it cannot run here, e.g. the image bench without root), then a
// summary JSON line last: {"bench":"all","ran":6,"ok":5,"failed":1,"skipped":1,"failedBenches":[…],…}.
// Each benchmark's own output goes to stderr, so stdout holds only these lines.
//
// Usage: node bench/run-all.js [--only startup,status] [--skip image] [--list] [--dir bench/]
// Exit status: 0 when every benchmark that ran exited 0 (its targets may still be missed: see
// `ok`), 1 otherwise.
import {spawn} from 'node:child_process'
import {existsSync, readdirSync} from 'node:fs'
import {basename, dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '..')

const {values: a} = parseArgs({
  options: {
    only: {type: 'string'},
    skip: {type: 'string'},
    list: {type: 'boolean', default: false},
    dir: {type: 'string', default: here},
  },
})
const names = (v) => (v ? v.split(',').map((s) => s.trim()).filter(Boolean) : [])
const only = names(a.only)
const skip = names(a.skip)
const dir = resolve(a.dir)

const all = readdirSync(dir)
  .filter((f) => f.endsWith('.mjs'))
  .sort()
  .map((f) => ({name: basename(f, '.mjs'), file: join(dir, f)}))
const unknown = [...only, ...skip].filter((n) => !all.some((b) => b.name === n))
if (unknown.length > 0) {
  process.stderr.write(`bench/run-all: no benchmark named ${unknown.join(', ')} in ${dir} (there are: ${all.map((b) => b.name).join(', ')})\n`)
  process.exit(2)
}
const chosen = all.filter((b) => (only.length === 0 || only.includes(b.name)) && !skip.includes(b.name))
if (a.list) {
  for (const b of chosen) process.stdout.write(`${b.name}\n`)
  process.exit(0)
}

/** Why a benchmark cannot run on this machine, or undefined. */
function cannotRun(name) {
  if (dir === here && !existsSync(join(root, 'dist', 'cli', 'main.js'))) return 'pgi is not built: run `npm run build` (or `npm run bench`, which builds first)'
  // bench/image.mjs builds images (mmdebstrap, mounts): root only, as `pgi image build`
  if (dir === here && name === 'image' && process.getuid?.() !== 0) return 'needs root (it builds images, as `sudo pgi image build`)'
  return undefined
}

/** The last line of `text` that parses as a JSON object. */
function lastJson(text) {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean)
  for (let i = lines.length - 1; i >= 0; i--) {
    if (!lines[i].startsWith('{')) continue
    try {
      const v = JSON.parse(lines[i])
      if (v && typeof v === 'object' && !Array.isArray(v)) return v
    } catch {
      // not JSON: keep looking
    }
  }
  return undefined
}

function run(b) {
  return new Promise((res) => {
    const t0 = Date.now()
    let out = ''
    const child = spawn(process.execPath, [b.file], {cwd: root, stdio: ['ignore', 'pipe', 'inherit']})
    child.stdout.on('data', (d) => {
      out += d.toString()
      process.stderr.write(d)
    })
    child.on('error', (err) => res({bench: b.name, ok: false, exitCode: null, wallMs: Date.now() - t0, error: err.message}))
    child.on('close', (code, signal) => {
      const result = lastJson(out)
      const own = result && typeof result.ok === 'boolean' ? result.ok : result && typeof result.all_pass === 'boolean' ? result.all_pass : undefined
      res({
        bench: b.name,
        ok: code === 0 && own !== false,
        exitCode: code,
        ...(signal ? {signal} : {}),
        wallMs: Date.now() - t0,
        ...(result ? {result} : {error: 'no JSON object on its last lines'}),
      })
    })
  })
}

const started = new Date()
const lines = []
for (const b of chosen) {
  const why = cannotRun(b.name)
  const line = why ? {bench: b.name, skipped: why} : await run(b)
  lines.push(line)
  process.stdout.write(JSON.stringify(line) + '\n')
}
const ran = lines.filter((l) => !l.skipped)
const summary = {
  bench: 'all',
  startedAt: started.toISOString(),
  wallMs: Date.now() - started.getTime(),
  ran: ran.length,
  ok: ran.filter((l) => l.ok).length,
  failed: ran.filter((l) => !l.ok).length,
  skipped: lines.length - ran.length,
  failedBenches: ran.filter((l) => !l.ok).map((l) => l.bench),
  skippedBenches: lines.filter((l) => l.skipped).map((l) => l.bench),
  node: process.version,
}
process.stdout.write(JSON.stringify(summary) + '\n')
process.exitCode = ran.every((l) => l.exitCode === 0) ? 0 : 1
