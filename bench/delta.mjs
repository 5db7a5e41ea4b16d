#!/usr/bin/env node
// Delta delivery benchmark, the parts that run without a VM (needs root for a loop device, casync,
// python3, a built pgi: `npm run build`, and a store written by `pgi image publish` holding two
// versions). Reports:
//   - delta size: chunks of --to that --from lacks (compressed bytes, as casync fetches them) plus
//     the index, against the full image (the qcow2 size recorded in --to's manifest, if readable,
//     and the store's own bytes of --to);
//   - a real transfer of --to by the in-image tool (images/pgi-tryton/files/usr/local/sbin/
//     pgi-stage-delta: casync extract, seeded by --from's raw disk, onto a loop device, sha256
//     checked) from the store served by the lab's directory server through the lab's link
//     simulator: uninterrupted, then cut at 50 % of those bytes and resumed; total bytes on the
//     link over the uninterrupted ones;
//   - the link simulator's 2 Mbit/s cap (a 1 MB transfer through it) and casync's own
//     --rate-limit-bps at 250 000 B/s (the guest-side cap pgi-stage-delta sets), each as the rate
//     seen and its error from the target;
//   - the simulated time to stage --sites establishments (default 500) through a --uplink (1G)
//     Région uplink with school links drawn uniformly in 2–20 Mbit/s (seeded), full vs delta:
//     a fluid model, each link capped by its own rate and the uplink shared max-min fairly;
//   - when --to's delivery.json lists a binary patch from --from (pgi image publish): its size, and
//     the same real transfer with it (pgi-stage-delta --patch, the old files read from --from's
//     file system mounted read-only from the seed), uninterrupted then cut at 50 % and resumed.
// Options: --store DIR, --name N (pgi-tryton), --from V (1.0.0), --to V (2.0.0), --sites N,
// --uplink RATE, --skip-transfer, --explain IMAGES_DIR (where the delta's bytes are: each new
// chunk mapped to the files owning its blocks on --to's raw disk, the floor of sending changed
// files whole, from both versions' files.txt in that images folder, and the floor of sending them
// as binary deltas against --from's copies, zstd --patch-from; bench/delta_explain.py).
// Last line: one JSON object {"bench":"delta",...}.
import {execFileSync, spawn} from 'node:child_process'
import {createHash} from 'node:crypto'
import {openSync, readFileSync} from 'node:fs'
import {mkdtemp, readFile, rm, stat} from 'node:fs/promises'
import {cpus, loadavg, tmpdir, totalmem} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const argv = process.argv.slice(2)
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : def
}
const flag = (name) => argv.includes(`--${name}`)
const log = (m) => process.stderr.write(`${m}\n`)
const {parseCaibx, chunkPath} = await import('../dist/src/image/publish.js')
const {LinkSimulator} = await import('../dist/src/lab/link-sim.js')
const {linkSimConfigFrom, parseBandwidth} = await import('../dist/src/lab/link-sim-config.js')

const store = resolve(opt('store', '/var/tmp/pub22/s'))
const name = opt('name', 'pgi-tryton')
const from = opt('from', '1.0.0')
const to = opt('to', '2.0.0')
const sites = Number(opt('sites', '500'))
const uplinkBps = parseBandwidth(opt('uplink', '1G'))
const TOOL = join(here, '..', 'images/pgi-tryton/files/usr/local/sbin/pgi-stage-delta')
const castr = join(store, 'default.castr')
const result = {bench: 'delta', machine: {cpus: cpus().length, model: cpus()[0]?.model, mem_gib: Math.round(totalmem() / 2 ** 30), load_start: loadavg().map((x) => +x.toFixed(2))}, from, to}

// ---- delta size from the two indexes -----------------------------------------------------------
const delivery = JSON.parse(await readFile(join(store, name, to, 'delivery.json'), 'utf8'))
const idxTo = await readFile(join(store, name, to, 'disk.caibx'))
const idxFrom = await readFile(join(store, name, from, 'disk.caibx'))
const have = new Set(parseCaibx(idxFrom).map((c) => c.id))
const toChunks = parseCaibx(idxTo)
const want = new Map(toChunks.map((c) => [c.id, c.size]))
let newBytes = 0
let newChunks = 0
for (const id of want.keys()) {
  if (have.has(id)) continue
  newChunks++
  newBytes += (await stat(chunkPath(castr, id))).size
}
let qcow2 = null
try {
  const m = JSON.parse(await readFile(join(store, name, to, 'manifest.json'), 'utf8'))
  qcow2 = m.disk?.size_bytes ?? null
} catch {}
const full = qcow2 ?? delivery.chunks.stored_bytes
result.sizes = {
  full_bytes: full,
  full_is: qcow2 ? 'qcow2' : 'store bytes of the version',
  delta_chunks: newChunks,
  distinct_chunks: want.size,
  delta_bytes: newBytes + idxTo.length,
  delta_fraction: +((newBytes + idxTo.length) / full).toFixed(4),
}
log(`delta ${from} → ${to}: ${newChunks}/${want.size} chunks new, ${(newBytes / 1e6).toFixed(1)} MB + index ${(idxTo.length / 1e6).toFixed(2)} MB; full ${(full / 1e6).toFixed(1)} MB`)
// the binary patch from --from, when `pgi image publish` wrote one (src/image/patch.ts): what a guest
// whose disk still holds --from's bytes fetches instead of the chunks (the index, the patch)
const patch = (delivery.patches ?? []).find((p) => p.from === from)
if (patch) {
  result.sizes.patch_bytes = patch.size_bytes
  result.sizes.patch_chunks = patch.chunks
  result.sizes.patch_with_index_bytes = patch.size_bytes + idxTo.length
  result.sizes.patch_fraction = +((patch.size_bytes + idxTo.length) / full).toFixed(4)
  log(`patch from ${from}: ${(patch.size_bytes / 1e6).toFixed(1)} MB rebuilds ${patch.chunks} chunks: ${(result.sizes.patch_fraction * 100).toFixed(1)} % of the full image with the index`)
}

// ---- where the delta goes (--explain IMAGES_DIR) -----------------------------------------------
if (opt('explain')) {
  const imgs = resolve(opt('explain'))
  const work = await mkdtemp(join(tmpdir(), 'pgi-bench-delta-explain-'))
  try {
    // both versions' disks as raw files (sparse): the new one to map chunks to files, the old one
    // for the changed files' binary deltas
    const toRaw = async (v) => {
      const raw = join(work, `${v}.raw`)
      const qcow2 = JSON.parse(await readFile(join(imgs, name, v, 'manifest.json'), 'utf8')).disk.file
      execFileSync('qemu-img', ['convert', '-O', 'raw', join(imgs, name, v, qcow2), raw])
      return raw
    }
    const [raw, fromRaw] = [await toRaw(to), await toRaw(from)]
    // the new chunks with their place on --to's disk (the indexes read above), and the regular
    // files whose sha256 differs between the two versions' files.txt ("f MODE UID:GID SHA256 PATH")
    const chunks = []
    let at = 0
    const seen = new Set()
    for (const c of toChunks) {
      if (!have.has(c.id) && !seen.has(c.id)) {
        seen.add(c.id)
        chunks.push([at, at + c.size, (await stat(chunkPath(castr, c.id))).size])
      }
      at += c.size
    }
    const files = async (v) => new Map((await readFile(join(imgs, name, v, 'files.txt'), 'utf8')).split('\n').map((l) => l.split(' ')).filter((p) => p[0] === 'f').map((p) => [p.slice(4).join(' '), p[3]]))
    const [a, b] = [await files(from), await files(to)]
    const changed = [...b].filter(([p, h]) => a.get(p) !== h).map(([p]) => p)
    const out = execFileSync('python3', [join(here, 'delta_explain.py'), raw, fromRaw], {input: JSON.stringify({chunks, changed}), maxBuffer: 64 << 20})
    result.explain = JSON.parse(out.toString())
    log(`explained: ${JSON.stringify(result.explain.chunks.by_group.slice(0, 6))}; changed files ${result.explain.changed_files.count}, ${(result.explain.changed_files.zstd3_bytes / 1e6).toFixed(1)} MB compressed, ${(result.explain.changed_files.patch_from_bytes / 1e6).toFixed(1)} MB as binary deltas`)
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

// ---- transfers through the link simulator ------------------------------------------------------
function runTool(args, env) {
  return new Promise((ok) => {
    const c = spawn('python3', [TOOL, 'run', ...args], {env: {...process.env, ...env}})
    let out = ''
    c.stdout.on('data', (d) => (out += d))
    c.stderr.on('data', (d) => process.stderr.write(d))
    c.on('close', (code) => {
      let j = {}
      try {
        j = JSON.parse(out.trim().split('\n').pop())
      } catch {}
      ok({code, ...j})
    })
  })
}

async function viaSim(cfg, fn) {
  const sim = new LinkSimulator({config: linkSimConfigFrom(cfg, 'bench')})
  const a = await sim.attach({node: 'bench', vmid: 1}, 80, {host: '127.0.0.1', port: 0})
  try {
    return await fn(sim, `http://${a.address}/`)
  } finally {
    await sim.close()
  }
}

const bytesDown = (sim) => sim.stats()['bench/1']?.bytesDown ?? 0

if (!flag('skip-transfer')) {
  const work = await mkdtemp(join(process.env.PGI_BENCH_TMP ?? '/var/tmp', 'pgi-bench-delta-'))
  let loop
  try {
    const seed = join(work, 'from.raw')
    log(`extracting ${from}'s raw disk (the seed) from the local store…`)
    execFileSync('casync', ['extract', `--store=${castr}`, join(store, name, from, 'disk.caibx'), seed], {stdio: 'inherit'})
    const size = delivery.raw.size_bytes
    const target = join(work, 'target.img')
    const blank = () => {
      if (loop) execFileSync('losetup', ['-d', loop])
      execFileSync('rm', ['-f', target])
      execFileSync('truncate', ['-s', String(size), target])
      loop = execFileSync('losetup', ['-f', '--show', target], {encoding: 'utf8'}).trim()
    }
    const args = (url) => ['--store', url, '--index', `${name}/${to}/disk.caibx`, '--index-sha256', delivery.index.sha256, '--raw-sha256', delivery.raw.sha256, '--raw-size', String(size), '--target', loop, '--seed', seed]
    const dirTarget = {uplink: {ports: {80: {dir: store}}}}

    blank()
    const t0 = Date.now()
    const whole = await viaSim(dirTarget, async (sim, url) => {
      const r = await runTool(args(url), {PGI_STAGE_DELTA_DIR: join(work, 'state-1')})
      return {r, bytes: bytesDown(sim)}
    })
    if (whole.r.state !== 'done') throw new Error(`uninterrupted transfer failed: ${whole.r.error}`)
    result.uninterrupted = {bytes_on_link: whole.bytes, wall_s: Math.round((Date.now() - t0) / 1000), sha256_ok: whole.r.sha256 === delivery.raw.sha256}
    log(`uninterrupted: ${(whole.bytes / 1e6).toFixed(1)} MB on the link, ${result.uninterrupted.wall_s} s`)

    blank()
    const cutAt = Math.floor(whole.bytes / 2)
    const t1 = Date.now()
    const resumed = await viaSim({...dirTarget, sites: {'bench/1': {cut_at_byte: cutAt}}}, async (sim, url) => {
      const first = await runTool(args(url), {PGI_STAGE_DELTA_DIR: join(work, 'state-2')})
      const atCut = bytesDown(sim)
      sim.setConfig(linkSimConfigFrom(dirTarget, 'bench'))
      const second = await runTool(args(url), {PGI_STAGE_DELTA_DIR: join(work, 'state-2')})
      return {first, second, atCut, bytes: bytesDown(sim)}
    })
    if (resumed.second.state !== 'done') throw new Error(`resumed transfer failed: ${resumed.second.error}`)
    result.cut_and_resume = {
      cut_at_byte: cutAt,
      first_run: resumed.first.state,
      bytes_before_cut: resumed.atCut,
      bytes_total: resumed.bytes,
      ratio_to_uninterrupted: +(resumed.bytes / whole.bytes).toFixed(4),
      wall_s: Math.round((Date.now() - t1) / 1000),
      sha256_ok: resumed.second.sha256 === delivery.raw.sha256,
    }
    log(`cut at ${cutAt} and resumed: ${(resumed.bytes / 1e6).toFixed(1)} MB in all, ratio ${result.cut_and_resume.ratio_to_uninterrupted}`)

    if (patch) {
      // with the patch: the old files the patch names are read from --from's file system, mounted
      // read-only from the seed (as a guest reads them from its running root)
      const mnt = join(work, 'from-root')
      execFileSync('mkdir', ['-p', mnt])
      const part = JSON.parse(execFileSync('sfdisk', ['-J', seed], {encoding: 'utf8'})).partitiontable.partitions[0].start * 512
      const fsLoop = execFileSync('losetup', ['-f', '--show', '-r', '-o', String(part), seed], {encoding: 'utf8'}).trim()
      execFileSync('mount', ['-o', 'ro,noload', fsLoop, mnt])
      try {
        const pargs = (url) => [...args(url), '--patch', `${name}/${to}/${patch.file}`, '--patch-sha256', patch.sha256, '--patch-size', String(patch.size_bytes), '--seed-root', mnt]
        blank()
        const t2 = Date.now()
        const withPatch = await viaSim(dirTarget, async (sim, url) => ({r: await runTool(pargs(url), {PGI_STAGE_DELTA_DIR: join(work, 'state-3')}), bytes: bytesDown(sim)}))
        if (withPatch.r.state !== 'done') throw new Error(`transfer with the patch failed: ${withPatch.r.error}`)
        result.with_patch = {bytes_on_link: withPatch.bytes, fraction_of_full: +(withPatch.bytes / full).toFixed(4), chunks_rebuilt: withPatch.r.rebuilt, chunks_spoiled: withPatch.r.rebuild_failed, wall_s: Math.round((Date.now() - t2) / 1000), sha256_ok: withPatch.r.sha256 === delivery.raw.sha256}
        log(`with the patch: ${(withPatch.bytes / 1e6).toFixed(1)} MB on the link (${(result.with_patch.fraction_of_full * 100).toFixed(1)} %), ${withPatch.r.rebuilt} chunks rebuilt, ${result.with_patch.wall_s} s`)
        blank()
        const pcut = Math.floor(withPatch.bytes / 2)
        const t3 = Date.now()
        const presumed = await viaSim({...dirTarget, sites: {'bench/1': {cut_at_byte: pcut}}}, async (sim, url) => {
          const first = await runTool(pargs(url), {PGI_STAGE_DELTA_DIR: join(work, 'state-4')})
          sim.setConfig(linkSimConfigFrom(dirTarget, 'bench'))
          const second = await runTool(pargs(url), {PGI_STAGE_DELTA_DIR: join(work, 'state-4')})
          return {first, second, bytes: bytesDown(sim)}
        })
        result.with_patch.cut_and_resume = {cut_at_byte: pcut, first_run: presumed.first.state, bytes_total: presumed.bytes, ratio_to_uninterrupted: +(presumed.bytes / withPatch.bytes).toFixed(4), wall_s: Math.round((Date.now() - t3) / 1000), sha256_ok: presumed.second.sha256 === delivery.raw.sha256}
        log(`with the patch, cut at ${pcut} and resumed: ratio ${result.with_patch.cut_and_resume.ratio_to_uninterrupted}`)
      } finally {
        execFileSync('umount', [mnt])
        execFileSync('losetup', ['-d', fsLoop])
      }
    }
  } finally {
    if (loop) execFileSync('losetup', ['-d', loop])
    await rm(work, {recursive: true, force: true})
  }
}

// ---- caps ----------------------------------------------------------------------------------------
{
  // the simulator's per-site cap: 2.5 MB through a 2 Mbit/s link
  const work = await mkdtemp(join(tmpdir(), 'pgi-bench-cap-'))
  try {
    const f = join(work, 'blob')
    execFileSync('head', ['-c', '2500000', '/dev/urandom'], {stdio: ['ignore', openSync(f, 'w'), 'inherit']})
    const ms = await viaSim({uplink: {ports: {80: {dir: work}}}, default: {bandwidth: '2M'}}, async (_sim, url) => {
      const t = performance.now()
      const res = await fetch(`${url}blob`)
      const body = Buffer.from(await res.arrayBuffer())
      if (body.length !== 2_500_000) throw new Error('short read through the simulator')
      return performance.now() - t
    })
    const bps = (2_500_000 * 8) / (ms / 1000)
    result.sim_cap_2mbit = {rate_bps: Math.round(bps), error_pct: +(((bps - 2e6) / 2e6) * 100).toFixed(2)}
    log(`simulator at 2 Mbit/s: ${(bps / 1e6).toFixed(3)} Mbit/s`)
    // the guest-side cap on an unshaped link, 5 MB of random chunks at 250 000 B/s (2 Mbit/s):
    // casync's own --rate-limit-bps alone, then pgi-stage-delta (which adds its pacing to it)
    const b = join(work, 'b5')
    execFileSync('head', ['-c', '5000000', '/dev/urandom'], {stdio: ['ignore', openSync(b, 'w'), 'inherit']})
    execFileSync('casync', ['make', `--store=${join(work, 'default.castr')}`, join(work, 'b5.caibx'), b], {stdio: 'ignore'})
    const rate = 250_000
    const r = await viaSim({uplink: {ports: {80: {dir: work}}}}, async (sim, url) => {
      const t = performance.now()
      const code = await new Promise((ok) => spawn('casync', ['extract', `--store=${url}default.castr`, `--rate-limit-bps=${rate}`, join(work, 'b5.caibx'), join(work, 'b5.out')], {stdio: 'ignore'}).on('close', ok))
      return {ms: performance.now() - t, bytes: bytesDown(sim), code}
    })
    const got = r.bytes / (r.ms / 1000)
    result.casync_rate_limit_alone = {target_Bps: rate, rate_Bps: Math.round(got), error_pct: +(((got - rate) / rate) * 100).toFixed(2)}
    log(`casync --rate-limit-bps ${rate} alone: ${Math.round(got)} B/s`)
    execFileSync('truncate', ['-s', '5000192', join(work, 'tgt.img')])
    const lp = execFileSync('losetup', ['-f', '--show', join(work, 'tgt.img')], {encoding: 'utf8'}).trim()
    try {
      execFileSync('mkdir', ['-p', join(work, 'x', 'y')])
      execFileSync('truncate', ['-s', '1M', join(work, 'zero-seed')])
      execFileSync('cp', [join(work, 'b5.caibx'), join(work, 'x', 'y', 'disk.caibx')])
      const sha = (f) => createHash('sha256').update(readFileSync(f)).digest('hex')
      const p = await viaSim({uplink: {ports: {80: {dir: work}}}}, async (sim, url) => {
        const t = performance.now()
        const out = await runTool(['--store', url, '--index', 'x/y/disk.caibx', '--index-sha256', sha(join(work, 'b5.caibx')), '--raw-sha256', sha(b), '--raw-size', '5000000', '--target', lp, '--seed', join(work, 'zero-seed'), '--rate-limit-bps', String(rate)], {PGI_STAGE_DELTA_DIR: join(work, 'st')})
        return {ms: performance.now() - t, bytes: bytesDown(sim), out}
      })
      const pr = p.bytes / (p.ms / 1000)
      result.guest_cap_2mbit = {target_Bps: rate, bytes: p.bytes, rate_Bps: Math.round(pr), error_pct: +(((pr - rate) / rate) * 100).toFixed(2), ok: p.out.state === 'done'}
      log(`pgi-stage-delta --rate-limit-bps ${rate}: ${Math.round(pr)} B/s (${p.out.state}${p.out.error ? `: ${p.out.error}` : ''})`)
    } finally {
      execFileSync('losetup', ['-d', lp])
    }
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

// ---- the 500-establishment schedule (fluid model) ------------------------------------------------
function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Seconds until every site has its bytes: rates by max-min fair sharing of the uplink. */
function schedule(links, bytesPerSite, uplink) {
  let left = links.map(() => bytesPerSite)
  let active = links.map((_, i) => i)
  let t = 0
  const done = []
  while (active.length > 0) {
    // water-filling: sites slower than the fair share keep their rate, the rest share what is left
    const sorted = [...active].sort((a, b) => links[a] - links[b])
    let cap = uplink
    const rate = new Map()
    for (let k = 0; k < sorted.length; k++) {
      const share = cap / (sorted.length - k)
      const r = Math.min(links[sorted[k]], share)
      rate.set(sorted[k], r)
      cap -= r
    }
    const dt = Math.min(...active.map((i) => left[i] / rate.get(i)))
    t += dt
    for (const i of active) left[i] -= rate.get(i) * dt
    active = active.filter((i) => {
      if (left[i] > 1e-6) return true
      done.push(t)
      return false
    })
  }
  return {total_s: Math.round(t), median_site_s: Math.round(done.sort((a, b) => a - b)[Math.floor(done.length / 2)])}
}
const rnd = mulberry32(22)
const links = Array.from({length: sites}, () => (2e6 + rnd() * 18e6) / 8)
result.fleet = {
  sites,
  uplink_bps: uplinkBps * 8,
  school_links_bps: '2M–20M uniform, seed 22',
  full: schedule(links, full, uplinkBps),
  delta: schedule(links, result.sizes.delta_bytes, uplinkBps),
  ...(patch ? {delta_with_patch: schedule(links, result.with_patch?.bytes_on_link ?? result.sizes.patch_with_index_bytes, uplinkBps)} : {}),
  // not a measurement: the issue's target for a minor update (5 % of the full image), for scale
  delta_at_5pct: schedule(links, full * 0.05, uplinkBps),
  region_bytes_full: full * sites,
  region_bytes_delta: result.sizes.delta_bytes * sites,
}
log(`${sites} establishments: full ${result.fleet.full.total_s} s, delta ${result.fleet.delta.total_s} s`)
result.machine.load_end = loadavg().map((x) => +x.toFixed(2))
console.log(JSON.stringify(result))
