#!/usr/bin/env node
// bench/lab-scale: start a simulated lab of 50 nodes and 500 sites (one VM per site, created and
// started through the API), then measure how many simple authenticated GETs per second the lab
// daemon sustains over HTTPS keep-alive on loopback for a bounded time, and the daemon's RSS.
// Needs a build (npm run build). Targets: >= 2000 GETs/s, < 500 MB RSS.
// Last line: one JSON object {"bench":"lab-scale",...}.
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {cpus, tmpdir} from 'node:os'
import {join} from 'node:path'
import {Pool} from 'undici'

const NODES = Number(process.env.LAB_NODES ?? 50)
const SITES = Number(process.env.LAB_SITES ?? 500)
const SECONDS = Number(process.env.LAB_SECONDS ?? 10)
const CONCURRENCY = Number(process.env.LAB_CONCURRENCY ?? 64)

const root = new URL('..', import.meta.url).pathname
const {startLab, stopLab} = await import(join(root, 'dist/src/lab/lab.js'))
const {SecretStore} = await import(join(root, 'dist/src/secrets/store.js'))

const dir = await mkdtemp(join(tmpdir(), 'pgi-lab-scale-'))
const env = {...process.env, PGI_STATE_DIR: join(dir, 'state')}
const rss = async (pid) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))[1]) * 1024
let summary
try {
  const t0 = Date.now()
  // timeScale 0.001: a 2 s create takes 2 ms, so setting up 500 VMs stays quick.
  summary = await startLab({dir: join(dir, 'lab'), nodes: NODES, sites: SITES, backend: 'simulated', timeScale: 0.001, authFailDelayMs: 10, env})
  const startMs = Date.now() - t0
  const pid = summary.daemon.pid
  const store = await SecretStore.open({dir: summary.secretsDir, recipients: [], env})
  const token = `pgi@pve!deploy=${(await store.get('hypervisors/lab1/token')).reveal()}`
  const pools = {}
  for (const n of summary.nodes) {
    const cert = await readFile(join(summary.dir, 'nodes', n.name, 'pve-ssl.pem'), 'utf8')
    pools[n.name] = new Pool(n.url, {connections: Math.max(2, Math.ceil(CONCURRENCY / NODES) + 1), pipelining: 1, connect: {ca: cert, servername: 'localhost'}})
  }
  const headers = {authorization: `PVEAPIToken=${token}`}
  const call = async (node, method, path, body) => {
    const r = await pools[node].request({method, path: `/api2/json${path}`, headers: body ? {...headers, 'content-type': 'application/x-www-form-urlencoded'} : headers, body})
    const text = await r.body.text()
    if (r.statusCode !== 200) throw new Error(`${method} ${path}: ${r.statusCode} ${text}`)
    return JSON.parse(text).data
  }
  // One VM per site, placed like the generated inventory (round-robin over nodes, vmid 1001…).
  const t1 = Date.now()
  const vms = []
  const perNode = new Map()
  for (let s = 0; s < SITES; s++) {
    const node = summary.nodes[s % NODES].name
    const vmid = 1001 + (perNode.get(node) ?? 0)
    perNode.set(node, (perNode.get(node) ?? 0) + 1)
    vms.push({node, vmid})
  }
  const waitTask = async (node, upid) => {
    for (;;) {
      const st = await call(node, 'GET', `/nodes/${node}/tasks/${encodeURIComponent(upid)}/status`)
      if (st.status === 'stopped') {
        if (st.exitstatus !== 'OK') throw new Error(`${upid}: ${st.exitstatus}`)
        return
      }
      await new Promise((r) => setTimeout(r, 5))
    }
  }
  const queue = [...vms]
  await Promise.all(Array.from({length: 32}, async () => {
    for (let v = queue.shift(); v; v = queue.shift()) {
      const body = `vmid=${v.vmid}&name=site-${v.vmid}&agent=1&virtio0=${encodeURIComponent('local-vm:8')}&virtio1=${encodeURIComponent('local-vm:8,serial=pgi-data')}&net0=${encodeURIComponent('virtio,bridge=vmbr0')}`
      await waitTask(v.node, await call(v.node, 'POST', `/nodes/${v.node}/qemu`, body))
      await waitTask(v.node, await call(v.node, 'POST', `/nodes/${v.node}/qemu/${v.vmid}/status/start`, ''))
    }
  }))
  const setupMs = Date.now() - t1
  // Load: simple GETs (status/current of a VM, and /version), round-robin over VMs and nodes.
  let n = 0
  let errors = 0
  const end = Date.now() + SECONDS * 1000
  const tl = Date.now()
  await Promise.all(Array.from({length: CONCURRENCY}, async (_, w) => {
    let i = w
    while (Date.now() < end) {
      const v = vms[i++ % vms.length]
      try {
        await call(v.node, 'GET', i % 4 === 0 ? '/version' : `/nodes/${v.node}/qemu/${v.vmid}/status/current`)
        n++
      } catch {
        errors++
      }
    }
  }))
  const elapsed = (Date.now() - tl) / 1000
  const rssBytes = await rss(pid)
  for (const p of Object.values(pools)) await p.close()
  const result = {
    bench: 'lab-scale',
    nodes: NODES,
    sites: SITES,
    vms_running: vms.length,
    seconds: Math.round(elapsed * 10) / 10,
    concurrency: CONCURRENCY,
    gets: n,
    errors,
    gets_per_s: Math.round(n / elapsed),
    daemon_rss_mb: Math.round(rssBytes / 2 ** 20),
    start_ms: startMs,
    setup_500_vms_ms: setupMs,
    cpus: cpus().length,
    target: {gets_per_s: 2000, rss_mb: 500},
    ok: n / elapsed >= 2000 && rssBytes < 500 * 2 ** 20 && errors === 0,
  }
  await stopLab({dir: summary.dir, env})
  console.log(JSON.stringify(result))
} catch (e) {
  if (summary) await stopLab({dir: summary.dir, env}).catch(() => undefined)
  console.error(e)
  console.log(JSON.stringify({bench: 'lab-scale', error: String(e?.message ?? e)}))
  process.exitCode = 1
} finally {
  await rm(dir, {recursive: true, force: true})
}
