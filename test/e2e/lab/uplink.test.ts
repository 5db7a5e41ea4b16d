import {createHash, randomBytes} from 'node:crypto'
import {copyFile, mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import type {TaskContext} from '../../../src/lab/backend.js'
import {QemuBackend} from '../../../src/lab/qemu-backend.js'
import {StderrIo} from '../../../src/io.js'
import {cachedPgiImage} from '../../helpers/e2e-image.js'
import {startTestLab, type TestLab} from '../../unit/lab/lab-harness.js'

/**
 * A real guest's path to a host-side store (QEMU guestfwd on its uplink address → socat → the
 * lab's link simulator → the lab's HTTP server of a directory), on the PGI image under QEMU:
 * the guest fetches a file whole; a cut at byte N delivers exactly N; the link's rate is the
 * configured one; nothing else of the host is reachable (restrict=on). When the image carries
 * pgi-stage-delta and PGI_E2E_DELTA_STORE names a `pgi image publish` store, the guest also
 * assembles that store's version (PGI_E2E_DELTA_VERSION, default 2.0.0) onto a blank disk
 * hot-plugged through the API, seeded by its own OS disk, and checks it against the signed digest.
 */

const BOOT_TIMEOUT_MS = Number(process.env.PGI_E2E_BOOT_TIMEOUT_S ?? 20 * 60) * 1000
const ctx: TaskContext = {upid: 'UPID:lab1:00000001:00000001:00000001:test:100:root@pam:', log: () => undefined, signal: new AbortController().signal}
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

describe('guest uplink through the link simulator (qemu backend)', () => {
  const cleanups: (() => Promise<unknown>)[] = []
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined)
  })

  it('a guest reaches the served store through its uplink, shaped and cut as configured', async () => {
    const images = await cachedPgiImage(new StderrIo('info', false))
    const cfgDir = await mkdtemp(join(tmpdir(), 'pgi-uplink-'))
    cleanups.push(() => rm(cfgDir, {recursive: true, force: true}))
    const served = join(cfgDir, 'store')
    await mkdir(served)
    const blob = randomBytes(1_000_000)
    await writeFile(join(served, 'blob'), blob)
    const deltaStore = process.env.PGI_E2E_DELTA_STORE
    const cfgFile = join(cfgDir, 'link-sim.yaml')
    const statsFile = join(cfgDir, 'link-sim.json')
    const yaml = (site: string) => `uplink:\n  ports:\n    80: {dir: ${served}}\n${deltaStore ? `    8080: {dir: ${deltaStore}}\n` : ''}sites:\n  lab1/120: ${site}\n`
    await writeFile(cfgFile, yaml('{bandwidth: 100M}'))
    const be = new QemuBackend({closeGraceMs: 5000, linkSim: {configFile: cfgFile, statsFile}})
    const lab: TestLab = await startTestLab({backend: be, lockTimeoutMs: 60_000})
    cleanups.push(() => lab.close())
    const V = '/nodes/lab1/qemu/120'
    const ok = async (method: string, path: string, params: Record<string, string | number> = {}) => {
      const r = await lab.call(method, path, params)
      expect(r.status, `${method} ${path}: ${r.status} ${r.reason}`).toBe(200)
      if (typeof r.body.data === 'string' && r.body.data.startsWith('UPID:')) expect((await lab.wait(r.body.data)).exitstatus, `${method} ${path}`).toBe('OK')
      return r.body.data
    }
    const sh = async (script: string, timeoutMs = 10 * 60_000) => {
      const {pid} = await ok('POST', `${V}/agent/exec`, {command: ['/bin/sh', '-c', script]} as never)
      const end = Date.now() + timeoutMs
      for (;;) {
        const st = await ok('GET', `${V}/agent/exec-status`, {pid})
        if (st.exited) return st as {exitcode?: number; 'out-data'?: string; 'err-data'?: string}
        if (Date.now() > end) throw new Error(`guest command still running after ${timeoutMs} ms: ${script}`)
        await new Promise((r) => setTimeout(r, 1000))
      }
    }
    const staged = join(lab.dir, 'tmp', 'staged.qcow2')
    await copyFile(join(images.root, 'pgi-tryton', images.version, `pgi-tryton-${images.version}.qcow2`), staged)
    await lab.rt.backend.importFile('lab1', 'local', 'import', 'pgi.qcow2', staged, ctx)
    await ok('POST', '/nodes/lab1/qemu', {vmid: 120, name: 'uplink', memory: 1024, cores: 1, agent: 1, virtio0: 'local-vm:0,import-from=local:import/pgi.qcow2', virtio1: 'local-vm:1,serial=pgi-data', ide2: 'local-vm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.62.0.10/24,gw=10.62.0.1', ciupgrade: 0})
    await ok('POST', `${V}/status/start`)
    const deadline = Date.now() + BOOT_TIMEOUT_MS
    while ((await lab.call('POST', `${V}/agent/ping`)).status !== 200) {
      if (Date.now() > deadline) throw new Error(`guest agent did not answer within ${BOOT_TIMEOUT_MS} ms`)
      await new Promise((r) => setTimeout(r, 3000))
    }
    const fetchIn = (url: string) =>
      `python3 -c "import hashlib,sys,time,urllib.request as u
t=time.time()
try:
  d=u.urlopen('${url}',timeout=20).read()
except Exception as e:
  d=getattr(e,'partial',b'')
  print(repr(e),file=sys.stderr)
print(len(d),hashlib.sha256(d).hexdigest(),round(time.time()-t,3))"`

    // the agent answers before cloud-init has configured the network: wait for the route
    const net = await sh('for i in $(seq 300); do ip -4 route get 10.62.0.253 >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1')
    expect(net.exitcode, 'guest network configured').toBe(0)

    // the whole file, through the uplink address of 10.62.0.0/24
    const whole = await sh(fetchIn('http://10.62.0.253/blob'))
    if (!(whole['out-data'] ?? '').startsWith(String(blob.length))) {
      const {execFileSync} = await import('node:child_process')
      console.log(JSON.stringify(whole), execFileSync('sh', ['-c', `find ${lab.dir} -name 'uplink-relay.log' -o -name 'qemu.log' -o -name 'cmdline' | head; find ${lab.dir} -name uplink-relay.log -exec cat {} +; ps -ef | grep -c socat`], {encoding: 'utf8'}))
    }
    expect(whole.exitcode, JSON.stringify(whole)).toBe(0)
    const [n, digest] = (whole['out-data'] ?? '').trim().split(' ')
    expect(Number(n)).toBe(blob.length)
    expect(digest).toBe(sha(blob))

    // 2 Mbit/s: 1 MB in about 4 s (the simulator's own count of the bytes and the guest's time)
    await writeFile(cfgFile, yaml('{bandwidth: 2M}'))
    await expect.poll(async () => (await readFile(cfgFile, 'utf8')).includes('2M')).toBe(true)
    await new Promise((r) => setTimeout(r, 1000))
    const capped = await sh(fetchIn('http://10.62.0.253/blob'))
    const secs = Number((capped['out-data'] ?? '').trim().split(' ')[2])
    const bps = (blob.length * 8) / secs
    expect(bps).toBeGreaterThan(1.7e6)
    expect(bps).toBeLessThan(2.2e6)

    // a cut at byte 300 000 (request and answer both count): the guest gets a short body
    await writeFile(cfgFile, yaml('{cut_at_byte: 300000}'))
    await new Promise((r) => setTimeout(r, 1500))
    const cut = await sh(fetchIn('http://10.62.0.253/blob'))
    const got = Number((cut['out-data'] ?? '').trim().split(' ')[0])
    expect(got).toBeLessThan(300_000)
    expect(got).toBeGreaterThan(250_000)
    const stats = JSON.parse(await readFile(statsFile, 'utf8').catch(() => '{}'))
    await expect.poll(async () => JSON.parse(await readFile(statsFile, 'utf8')).sites['lab1/120'].cuts, {timeout: 5000}).toBe(1)
    void stats

    // nothing else of the host: the gateway's other ports and another address do not answer
    await writeFile(cfgFile, yaml('{bandwidth: 100M}'))
    await new Promise((r) => setTimeout(r, 1500))
    const other = await sh(`${fetchIn('http://10.62.0.2:8006/')} ; ${fetchIn('http://10.62.0.253:81/')}`)
    for (const line of (other['out-data'] ?? '').trim().split('\n')) expect(line.split(' ')[0]).toBe('0')

    // -- delta assembly in the guest, when the image has the tool and a store is given -------------
    const hasTool = (await sh('test -x /usr/local/sbin/pgi-stage-delta && command -v casync')).exitcode === 0
    if (!deltaStore || !hasTool) {
      console.log(`delta assembly not run: ${!deltaStore ? 'PGI_E2E_DELTA_STORE not set' : 'the image has no pgi-stage-delta/casync'}`)
      return
    }
    const version = process.env.PGI_E2E_DELTA_VERSION ?? '2.0.0'
    const delivery = JSON.parse(await readFile(join(deltaStore, 'pgi-tryton', version, 'delivery.json'), 'utf8'))
    const gib = Math.ceil(delivery.raw.size_bytes / 2 ** 30)
    await ok('PUT', `${V}/config`, {virtio2: `local-vm:${gib},format=raw,serial=pgi-stage`})
    const args = `--store http://10.62.0.253:8080/ --index pgi-tryton/${version}/disk.caibx --index-sha256 ${delivery.index.sha256} --raw-sha256 ${delivery.raw.sha256} --raw-size ${delivery.raw.size_bytes} --target /dev/disk/by-id/virtio-pgi-stage`
    const started = await sh(`for i in $(seq 60); do [ -e /dev/disk/by-id/virtio-pgi-stage ] && break; sleep 1; done; /usr/local/sbin/pgi-stage-delta start ${args}`)
    expect(started.exitcode, JSON.stringify(started)).toBe(0)
    const t0 = Date.now()
    let last: Record<string, unknown> = {}
    for (;;) {
      const st = await sh('/usr/local/sbin/pgi-stage-delta status')
      last = JSON.parse((st['out-data'] ?? '{}').trim())
      console.log(`stage-delta: ${last.phase} disk ${last.disk_done}/${last.disk_total} fetched ${last.fetched_total} (${Math.round((Date.now() - t0) / 1000)} s)`)
      if (last.state !== 'running') break
      if (Date.now() - t0 > 60 * 60_000) throw new Error('delta assembly did not finish within an hour')
      await new Promise((r) => setTimeout(r, 15_000))
    }
    expect(last.error ?? null).toBeNull()
    expect(last.state).toBe('done')
    expect(last.sha256).toBe(delivery.raw.sha256)
    const link = JSON.parse(await readFile(statsFile, 'utf8')).sites['lab1/120']
    console.log(`delta assembly: ${Math.round((Date.now() - t0) / 1000)} s, link bytes down in all ${link.bytesDown}`)
    await ok('POST', `${V}/status/stop`)
  }, BOOT_TIMEOUT_MS + 70 * 60_000)
})
