#!/usr/bin/env node
// Makes the trimmed Proxmox VE API schema the lab validates against and the tests read
// (src/lab/pve-schema/pve-9.1.json, pve-8.4.json) from the official files (pve-docs'
// api-viewer/apidata.js, converted to JSON: apidoc.json for 9.1, apidoc-pve8.json for 8.4).
//
//   node scripts/trim-pve-schema.mjs [DIR [OUT]]
//     DIR: the official files (PGI_PVE_API_DIR, else ../shared/pve-api beside the repository)
//     OUT: where to write (default src/lab/pve-schema; the conformance test writes elsewhere and compares)
//
// Kept: every path and method; per method its name, flags (allowtoken, protected, proxyto, …),
// permissions (check, user, and the permission text: it names privileges no check expresses),
// parameters and return shape. Per parameter or returned property: type, format (a named format,
// or a property-string sub-schema with the same keys kept for each of its keys), optional,
// default, minimum/maximum, minLength/maxLength, pattern, enum, requires, items, properties,
// alias/keyAlias/default_key and the other structural keys. Dropped: the prose (description,
// verbose_description, typetext, format_description, title, renderer) and each node's `text`/`leaf`
// (derivable from its path). The tree is flattened: one line per path, sorted, so that a new
// PVE release shows up as a readable diff.
import {createHash} from 'node:crypto'
import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const srcDir = resolve(process.argv[2] ?? process.env.PGI_PVE_API_DIR ?? join(root, '..', 'shared', 'pve-api'))
const outDir = resolve(process.argv[3] ?? join(root, 'src', 'lab', 'pve-schema'))
const FILES = [
  {version: '9.1', src: 'apidoc.json', out: 'pve-9.1.json'},
  {version: '8.4', src: 'apidoc-pve8.json', out: 'pve-8.4.json'},
]

/** Keys that are prose for people (the API viewer's text), never read by a program. */
const PROSE = new Set(['description', 'verbose_description', 'typetext', 'format_description', 'title', 'renderer'])

/** A parameter / property / sub-schema without its prose, recursively. */
function trimSchema(s) {
  if (Array.isArray(s)) return s.map(trimSchema)
  if (!s || typeof s !== 'object') return s
  const out = {}
  for (const [k, v] of Object.entries(s)) {
    if (PROSE.has(k)) continue
    if (k === 'properties' || (k === 'format' && v && typeof v === 'object')) {
      out[k] = Object.fromEntries(Object.entries(v).map(([name, sub]) => [name, trimSchema(sub)]))
    } else if (k === 'items' || k === 'oneOf' || k === 'additionalProperties') out[k] = trimSchema(v)
    else out[k] = v
  }
  return out
}

function trimMethod(m) {
  const out = {}
  for (const [k, v] of Object.entries(m)) {
    if (k === 'description') continue
    if (k === 'parameters' || k === 'returns') out[k] = trimSchema(v)
    else out[k] = v // name, method, allowtoken, protected, proxyto, permissions, …
  }
  return out
}

function trim(roots) {
  const nodes = []
  const walk = (list) => {
    for (const n of list) {
      const node = {path: n.path}
      if (n.info) node.info = Object.fromEntries(Object.entries(n.info).map(([verb, m]) => [verb, trimMethod(m)]))
      nodes.push(node)
      if (n.children) walk(n.children)
    }
  }
  walk(roots)
  nodes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  return nodes
}

for (const f of FILES) {
  if (!existsSync(join(srcDir, f.src))) {
    process.stderr.write(`trim-pve-schema: ${join(srcDir, f.src)} not found (give the folder of the official files as argument or PGI_PVE_API_DIR)\n`)
    process.exit(2)
  }
  const text = readFileSync(join(srcDir, f.src), 'utf8')
  const sha = createHash('sha256').update(text).digest('hex')
  const nodes = trim(JSON.parse(text))
  const header = {path: '', source: f.src, sha256: sha, version: f.version, generator: 'scripts/trim-pve-schema.mjs'}
  const body = `[${[header, ...nodes].map((n) => JSON.stringify(n)).join(',\n')}]\n`
  writeFileSync(join(outDir, f.out), body)
  const methods = nodes.reduce((a, n) => a + Object.keys(n.info ?? {}).length, 0)
  process.stdout.write(`${f.out}: ${nodes.length} paths, ${methods} methods, ${body.length} bytes (from ${text.length})\n`)
}
