#!/usr/bin/env node
// Image benchmark (needs root and a built pgi: `npm run build`): two builds of a recipe (default
// pgi-tryton, the 1.x line; pgi-tryton@2 for the 2.x line) from the same lock with a warm apt
// cache, into two folders, with the same version (the recipe's, "-bench.<time>") and
// SOURCE_DATE_EPOCH; then a boot of the first under QEMU until pgi-health is healthy.
// Reports build time, qcow2 size, boot-to-healthy time and whether the two builds gave the same
// file tree (paths, types, modes, owners, content hashes) and the same image sha256.
// Last line: one JSON object {"bench":"image",...}.
// Usage: node bench/image.mjs [RECIPE] [--no-boot] [--keep]
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir, cpus, totalmem} from 'node:os'
import {join} from 'node:path'

const argv = process.argv.slice(2)
const args = new Set(argv.filter((a) => a.startsWith('--')))
const recipeRef = argv.find((a) => !a.startsWith('--')) ?? 'pgi-tryton'
const {buildImage} = await import('../dist/src/image/build.js')
const {loadRecipe} = await import('../dist/src/image/recipe.js')
const {testImage} = await import('../dist/src/image/boottest.js')
const {StderrIo} = await import('../dist/src/io.js')
const io = new StderrIo('warn', false)
const env = {...process.env, SOURCE_DATE_EPOCH: process.env.SOURCE_DATE_EPOCH ?? '1767225600'}
// a version of the recipe's own line (a recipe of several lines builds no other)
const version = `${(await loadRecipe(recipeRef)).version.replace(/[-~+].*$/, '')}-bench.${Math.floor(Date.now() / 1000)}`
const dirs = []

async function build(label) {
  const out = await mkdtemp(join(tmpdir(), `pgi-bench-image-${label}-`))
  dirs.push(out)
  const t0 = Date.now()
  const r = await buildImage({recipe: recipeRef, version, out, io, env})
  const seconds = (Date.now() - t0) / 1000
  const manifest = JSON.parse(await readFile(r.manifest, 'utf8'))
  const files = await readFile(join(r.dir, 'files.txt'), 'utf8')
  process.stderr.write(`build ${label}: ${seconds.toFixed(1)} s, ${(r.sizeBytes / 1e6).toFixed(1)} MB, sha256 ${r.sha256.slice(0, 16)}, tree ${r.treeDigest.slice(0, 16)}\n`)
  return {out, seconds, manifest, files, r}
}

function treeDiff(a, b) {
  const map = (t) => new Map(t.split('\n').filter(Boolean).map((l) => [l.slice(l.lastIndexOf(' /') + 1), l]))
  const ma = map(a)
  const mb = map(b)
  const diffs = []
  for (const [p, l] of ma) if (mb.get(p) !== l) diffs.push(p)
  for (const p of mb.keys()) if (!ma.has(p)) diffs.push(p)
  return diffs
}

try {
  const a = await build('a')
  const b = await build('b')
  const diffs = treeDiff(a.files, b.files)
  let boot
  if (!args.has('--no-boot')) {
    const t = await testImage({version, root: a.out, quick: true, io, env})
    boot = {accel: t.accel, boot_to_healthy_s: t.bootToHealthyS}
    process.stderr.write(`boot: ${t.bootToHealthyS} s to healthy (${t.accel})\n`)
  }
  const result = {
    bench: 'image',
    machine: {cpus: cpus().length, mem_gib: Math.round(totalmem() / 2 ** 30)},
    recipe: recipeRef,
    version,
    tryton: a.manifest.packages.find((p) => p.name === 'tryton-server')?.version,
    kernel: a.manifest.kernel.release,
    build_s: [Number(a.seconds.toFixed(1)), Number(b.seconds.toFixed(1))],
    build_target_s: 240,
    qcow2_bytes: a.r.sizeBytes,
    qcow2_mb: Number((a.r.sizeBytes / 1e6).toFixed(1)),
    qcow2_target_mb: 250,
    packages: a.manifest.packages.length,
    tree_entries: a.manifest.tree.entries,
    same_tree: a.manifest.tree.digest === b.manifest.tree.digest,
    tree_differences: diffs.length,
    tree_difference_examples: diffs.slice(0, 10),
    same_raw_sha256: a.manifest.disk.raw_sha256 === b.manifest.disk.raw_sha256,
    same_image_sha256: a.manifest.disk.sha256 === b.manifest.disk.sha256,
    ...(boot ? {boot_accel: boot.accel, boot_to_healthy_s: boot.boot_to_healthy_s, boot_target_s: 90} : {}),
  }
  console.log(JSON.stringify(result))
} finally {
  if (!args.has('--keep')) for (const d of dirs) await rm(d, {recursive: true, force: true})
}
