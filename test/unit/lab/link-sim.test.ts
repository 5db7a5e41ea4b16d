import {createHash, randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {connect, createServer, type AddressInfo, type Server, type Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {linkSimConfigFrom, loadLinkSimFile, parseBandwidth, profileFor} from '../../../src/lab/link-sim-config.js'
import {LinkSimulator} from '../../../src/lab/link-sim.js'

/**
 * The lab's link simulator on loopback only: a target server on 127.0.0.1, the simulator's
 * listener on 127.0.0.1, a client playing the guest.
 */

let servers: Server[] = []
let sims: LinkSimulator[] = []
let dir: string

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgi-linksim-'))
})

afterEach(async () => {
  for (const s of sims) await s.close()
  for (const s of servers) await new Promise<void>((r) => s.close(() => r()))
  sims = []
  servers = []
  await rm(dir, {recursive: true, force: true})
})

/** A target that sends `payload` to every client, then closes; and records what it receives. */
async function target(payload: Buffer = Buffer.alloc(0)): Promise<{port: number; received: Buffer[]}> {
  const received: Buffer[] = []
  const srv = createServer((s) => {
    const got: Buffer[] = []
    s.on('data', (d: Buffer) => got.push(d))
    s.on('end', () => {
      received.push(Buffer.concat(got))
      s.end()
    })
    s.on('error', () => undefined)
    if (payload.length > 0) s.end(payload)
  })
  servers.push(srv)
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
  return {port: (srv.address() as AddressInfo).port, received}
}

async function sim(yaml: Record<string, unknown>, site = {node: 'lab1', vmid: 1001, name: 'pgi-0990001a'}, guestPort = 80): Promise<{sim: LinkSimulator; port: number}> {
  const s = new LinkSimulator({config: linkSimConfigFrom(yaml, 'test')})
  sims.push(s)
  const a = await s.attach(site, guestPort, {host: '127.0.0.1', port: 0})
  return {sim: s, port: Number(a.address.split(':')[1])}
}

/** Connects as the guest, sends `send`, reads until the other side closes. */
function fetchAll(port: number, send?: Buffer, halfClose = true): Promise<{data: Buffer; ms: number; closed: 'end' | 'error'}> {
  return new Promise((resolve) => {
    const t0 = performance.now()
    const parts: Buffer[] = []
    const c: Socket = connect(port, '127.0.0.1')
    c.on('connect', () => {
      // an HTTP client keeps its side open until the answer (Connection: close ends it)
      if (send) halfClose ? c.end(send) : c.write(send)
    })
    c.on('data', (d: Buffer) => parts.push(d))
    let done = false
    const finish = (closed: 'end' | 'error') => {
      if (done) return
      done = true
      resolve({data: Buffer.concat(parts), ms: performance.now() - t0, closed})
    }
    c.on('end', () => finish('end'))
    c.on('error', () => finish('error'))
    c.on('close', () => finish('end'))
  })
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

describe('link simulator configuration', () => {
  it('parses bit rates as network links are sold (decimal, bits)', () => {
    expect(parseBandwidth('2M')).toBe(250_000)
    expect(parseBandwidth('512k')).toBe(64_000)
    expect(parseBandwidth('1G')).toBe(125_000_000)
    expect(parseBandwidth('2 Mbit/s')).toBe(250_000)
    expect(parseBandwidth(8000)).toBe(1000)
    expect(parseBandwidth('unlimited')).toBe(Infinity)
    expect(parseBandwidth(0)).toBe(Infinity)
    expect(() => parseBandwidth('fast')).toThrow(/bit rate/)
    expect(() => parseBandwidth(-1)).toThrow(/bit rate/)
  })

  it('matches a site by node/vmid, VM name or UAI, merged over the default', () => {
    const cfg = linkSimConfigFrom({default: {bandwidth: '20M', latency_ms: 10}, sites: {'0990001A': {bandwidth: '2M'}, 'lab1/1002': {down: true}}}, 't')
    const a = profileFor(cfg, {node: 'lab1', vmid: 1001, name: 'pgi-0990001a'})
    expect(a.key).toBe('0990001A')
    expect(a.profile.downBytesPerS).toBe(250_000)
    expect(a.profile.upBytesPerS).toBe(250_000)
    expect(a.profile.latencyMs).toBe(10)
    expect(profileFor(cfg, {node: 'lab1', vmid: 1002}).profile.down).toBe(true)
    expect(profileFor(cfg, {node: 'lab1', vmid: 1003}).profile.downBytesPerS).toBe(2_500_000)
  })

  it('refuses unknown keys, bad values and targets off loopback, naming the file', async () => {
    expect(() => linkSimConfigFrom({defaults: {}}, 'f.yaml')).toThrow(/f\.yaml: unknown key "defaults"/)
    expect(() => linkSimConfigFrom({uplink: {ports: {80: '10.0.0.1:80'}}}, 'f.yaml')).toThrow(/loopback TCP address/)
    expect(() => linkSimConfigFrom({uplink: {ports: {99999: '127.0.0.1:80'}}}, 'f.yaml')).toThrow(/not a TCP port/)
    expect(() => linkSimConfigFrom({default: {loss: 1.5}}, 'f.yaml')).toThrow(/loss must be a fraction/)
    expect(() => linkSimConfigFrom({sites: {x: {cut_at_byte: -3}}}, 'f.yaml')).toThrow(/cut_at_byte/)
    expect(() => linkSimConfigFrom({sites: {x: {bandwith: '2M'}}}, 'f.yaml')).toThrow(/unknown key "bandwith"/)
    const f = join(dir, 'bad.yaml')
    await writeFile(f, 'uplink: [1, 2\n')
    await expect(loadLinkSimFile(f)).rejects.toThrow(/bad\.yaml: not valid YAML/)
  })
})

describe('link simulator shaping (loopback)', () => {
  it('relays bytes unchanged in both directions and counts them', async () => {
    const payload = randomBytes(3 * 1024 * 1024 + 17)
    const t = await target(payload)
    const {sim: s, port} = await sim({uplink: {ports: {80: `127.0.0.1:${t.port}`}}})
    const up = randomBytes(200_000)
    const r = await fetchAll(port, up)
    expect(sha(r.data)).toBe(sha(payload))
    await new Promise((res) => setTimeout(res, 50))
    expect(sha(t.received[0]!)).toBe(sha(up))
    const st = s.stats()['lab1/1001']!
    expect(st.bytesDown).toBe(payload.length)
    expect(st.bytesUp).toBe(up.length)
    expect(st.connections).toBe(1)
  })

  it('holds a 4 Mbit/s cap (500 kB in about 1 s) and shares it between connections', async () => {
    const payload = randomBytes(250_000)
    const t = await target(payload)
    const {port} = await sim({uplink: {ports: {80: `127.0.0.1:${t.port}`}}, default: {bandwidth: '4M'}})
    const t0 = performance.now()
    const [a, b] = await Promise.all([fetchAll(port), fetchAll(port)])
    const ms = performance.now() - t0
    expect(sha(a.data)).toBe(sha(payload))
    expect(sha(b.data)).toBe(sha(payload))
    // 2 × 250 kB at 500 kB/s: 1 s; round robin: both end near the end, not one after the other
    expect(ms).toBeGreaterThan(900)
    expect(ms).toBeLessThan(1600)
    expect(Math.min(a.ms, b.ms)).toBeGreaterThan(800)
  })

  it('holds a 2 Mbit/s cap within ±10 % over a 600 kB transfer', async () => {
    const payload = randomBytes(600_000)
    const t = await target(payload)
    const {port} = await sim({uplink: {ports: {80: `127.0.0.1:${t.port}`}}, sites: {'0990001A': {bandwidth: '2M'}}})
    const r = await fetchAll(port)
    expect(sha(r.data)).toBe(sha(payload))
    // 600 kB at 250 kB/s: 2.4 s; the rate seen by the guest, in bit/s
    const bps = (payload.length * 8) / (r.ms / 1000)
    expect(bps).toBeGreaterThan(1.8e6)
    expect(bps).toBeLessThan(2.2e6)
  })

  it('caps the upload direction by its own rate', async () => {
    const t = await target()
    const {port} = await sim({uplink: {ports: {80: `127.0.0.1:${t.port}`}}, default: {bandwidth: '100M', upload: '2M'}})
    const up = randomBytes(125_000)
    const r = await fetchAll(port, up)
    expect(r.ms).toBeGreaterThan(450)
    expect(r.ms).toBeLessThan(900)
    expect(sha(t.received[0]!)).toBe(sha(up))
  })

  it('adds the one-way latency in each direction', async () => {
    // an echo target: the round trip crosses the link twice
    const srv = createServer((s) => s.pipe(s))
    servers.push(srv)
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
    const {port} = await sim({uplink: {ports: {80: `127.0.0.1:${(srv.address() as AddressInfo).port}`}}, default: {latency_ms: 150}})
    const c = connect(port, '127.0.0.1')
    await new Promise((r) => c.on('connect', r))
    const rtt = await new Promise<number>((resolve) => {
      const t0 = performance.now()
      c.once('data', () => resolve(performance.now() - t0))
      c.write('ping')
    })
    c.destroy()
    expect(rtt).toBeGreaterThanOrEqual(295)
    expect(rtt).toBeLessThan(600)
  })

  it('cuts the link after exactly N bytes, refuses connections while cut, and comes back when the profile changes', async () => {
    const payload = randomBytes(600_000)
    const t = await target(payload)
    const cfg = {uplink: {ports: {80: `127.0.0.1:${t.port}`}}, default: {bandwidth: '40M'}, sites: {'lab1/1001': {cut_at_byte: 250_000}}}
    const {sim: s, port} = await sim(cfg)
    const first = await fetchAll(port)
    expect(first.data.length).toBe(250_000)
    expect(sha(first.data)).toBe(sha(payload.subarray(0, 250_000)))
    const st = s.stats()['lab1/1001']!
    expect(st.cut).toBe(true)
    expect(st.cuts).toBe(1)
    const second = await fetchAll(port)
    expect(second.data.length).toBe(0)
    // the file (here: the configuration) changes: the link is back
    s.setConfig(linkSimConfigFrom({...cfg, sites: {}}, 'test'))
    const third = await fetchAll(port)
    expect(sha(third.data)).toBe(sha(payload))
  })

  it('loses segments at the given rate, re-sends them after a timeout, and still delivers every byte in order', async () => {
    const payload = randomBytes(400_000)
    const t = await target(payload)
    const {sim: s, port} = await sim({uplink: {ports: {80: `127.0.0.1:${t.port}`}}, seed: 7, default: {bandwidth: '40M', loss: 0.01}})
    const r = await fetchAll(port)
    expect(sha(r.data)).toBe(sha(payload))
    const st = s.stats()['lab1/1001']!
    // ~277 segments, 1 %: a few losses, each costing the segment again and ≥ 200 ms of stall
    expect(st.lostSegments).toBeGreaterThan(0)
    expect(st.wireDown).toBe(payload.length + st.lostSegments * 1448)
    expect(r.ms).toBeGreaterThan(200)
  })

  it('follows its configuration file while connections run, keeping the last good one on a bad edit', async () => {
    const payload = randomBytes(100_000)
    const t = await target(payload)
    const file = join(dir, 'link-sim.yaml')
    await writeFile(file, `uplink:\n  ports:\n    80: 127.0.0.1:${t.port}\nsites:\n  pgi-0990001a: {down: true}\n`)
    const s = new LinkSimulator({configFile: file, statsFile: join(dir, 'stats.json')})
    sims.push(s)
    await s.start()
    const a = await s.attach({node: 'lab1', vmid: 1001, name: 'pgi-0990001a'}, 80, {host: '127.0.0.1', port: 0})
    const port = Number(a.address.split(':')[1])
    expect((await fetchAll(port)).data.length).toBe(0)
    await writeFile(file, `uplink:\n  ports:\n    80: 127.0.0.1:${t.port}\nsites:\n  pgi-0990001a: {down: false}\n`)
    await expect.poll(() => s.stats()['lab1/1001']?.cut, {timeout: 5000}).toBe(false)
    expect(sha((await fetchAll(port)).data)).toBe(sha(payload))
    await writeFile(file, 'sites: {x: {speed: 3}}\n')
    await new Promise((r) => setTimeout(r, 800))
    expect(s.config.ports.get(80)?.port).toBe(t.port)
    expect(sha((await fetchAll(port)).data)).toBe(sha(payload))
    await expect.poll(async () => JSON.parse(await readFile(join(dir, 'stats.json'), 'utf8').catch(() => '{}')).sites?.['lab1/1001']?.connections, {timeout: 5000}).toBe(3)
  })

  it('serves a directory target over HTTP on loopback through the link (GET, a range, nothing outside it)', async () => {
    const store = join(dir, 'store')
    await mkdir(join(store, 'default.castr', 'ab12'), {recursive: true})
    const chunk = randomBytes(100_000)
    await writeFile(join(store, 'default.castr', 'ab12', 'x.cacnk'), chunk)
    await writeFile(join(dir, 'secret'), 'not for guests')
    const {sim: s, port} = await sim({uplink: {ports: {80: {dir: store}}}, default: {bandwidth: '40M'}})
    const get = async (path: string, headers = '') => {
      const r = await fetchAll(port, Buffer.from(`GET ${path} HTTP/1.1\r\nHost: store\r\nConnection: close\r\n${headers}\r\n`), false)
      const i = r.data.indexOf('\r\n\r\n')
      return {head: r.data.subarray(0, i).toString(), body: r.data.subarray(i + 4)}
    }
    const full = await get('/default.castr/ab12/x.cacnk')
    expect(full.head).toMatch(/^HTTP\/1\.1 200/)
    expect(sha(full.body)).toBe(sha(chunk))
    const part = await get('/default.castr/ab12/x.cacnk', 'Range: bytes=1000-1999\r\n')
    expect(part.head).toMatch(/^HTTP\/1\.1 206/)
    expect(part.head).toMatch(/Content-Range: bytes 1000-1999\/100000/i)
    expect(sha(part.body)).toBe(sha(chunk.subarray(1000, 2000)))
    expect((await get('/default.castr/ab12/x.cacnk', 'Range: bytes=200000-\r\n')).head).toMatch(/^HTTP\/1\.1 416/)
    for (const p of ['/../secret', '/%2e%2e/secret', '/default.castr/..%2f..%2fsecret', '/..%5csecret']) {
      const r = await get(p)
      expect(r.head).toMatch(/^HTTP\/1\.1 (403|404)/)
      expect(r.body.toString()).not.toContain('not for guests')
    }
    expect((await get('/default.castr/')).head).toMatch(/^HTTP\/1\.1 404/)
    expect(s.stats()['lab1/1001']!.bytesDown).toBeGreaterThan(chunk.length)
    expect(() => linkSimConfigFrom({uplink: {ports: {80: {dir: 'relative'}}}}, 'f.yaml')).toThrow(/absolute directory/)
  })

  it('closes a connection for a guest port without a target', async () => {
    const {port} = await sim({uplink: {ports: {}}}, undefined, 22)
    const r = await fetchAll(port)
    expect(r.data.length).toBe(0)
  })
})

describe('the uplink address of a guest network', () => {
  it('is the third-last address of the subnet, skipping the guest, its gateway and its DNS', async () => {
    const {uplinkAddress} = await import('../../../src/lab/qemu-backend.js')
    const {userNetFor} = await import('../../../src/qemu/vm.js')
    expect(uplinkAddress(userNetFor('10.1.2.3', 24, '10.1.2.1', []))).toBe('10.1.2.253')
    expect(uplinkAddress(userNetFor('10.1.0.5', 16, '10.1.0.1', []))).toBe('10.1.255.253')
    expect(uplinkAddress(userNetFor('10.1.2.253', 24, '10.1.2.1', []))).toBe('10.1.2.252')
  })
})
