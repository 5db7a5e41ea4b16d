import {unwatchFile, watchFile} from 'node:fs'
import {mkdir, rename, writeFile} from 'node:fs/promises'
import {connect, createServer, type Server, type Socket} from 'node:net'
import {dirname} from 'node:path'

import {Pipe, type Flow, type PipeLink} from './link-sim-pipe.js'
import {emptyLinkSimConfig, loadLinkSimFile, profileFor, type LinkProfile, type LinkSimConfig, type SiteIdentity} from './link-sim-config.js'
import {serveDirectory, type StaticStore} from './static-store.js'

/**
 * The lab's link simulator: a TCP relay between lab guests and host-side targets that behaves
 * like each establishment's network link — bandwidth, one-way latency, segment loss, and a cut
 * after N bytes or at once. This kernel has no netem (and the lab never needs root), so the
 * shaping is done here, in user space, on the byte streams: the guest side is QEMU's `guestfwd`
 * (src/lab/qemu-backend.ts), which hands each guest connection to a relay process connected to
 * one of this simulator's sockets; the other side is a plain TCP connection to the target the
 * configuration names for that guest port (a static HTTP server of a chunk store, an SFTP server…).
 * Nothing in it knows about HTTP: it moves bytes.
 *
 * The model, per site (one establishment = one link, shared by all its connections):
 * - each direction is a serial link of `bandwidth` bytes/s: a segment occupies it for size/rate,
 *   connections take turns (round robin), an idle link saves no credit;
 * - each segment reaches the other side `latency_ms` after it left the link;
 * - with `loss` p, each 1448-byte segment (a TCP segment on a 1500-byte MTU) is lost with
 *   probability p: it used the link for nothing and its connection stalls for a retransmission
 *   timeout (Linux's minimum 200 ms, or 2 × latency + 200 ms) before it is sent again — what a
 *   loss costs a TCP flow, without modelling congestion control;
 * - `cut_at_byte` N: once N bytes crossed the link (both directions) since the profile was set,
 *   exactly N have been delivered and every connection of the site is closed; later connections
 *   are closed at once, until the profile changes. `down: true` cuts at once.
 * Memory stays bounded: a source is paused while more than 256 KiB wait for the link, and the
 * link stops feeding a destination that has 1 MiB unread.
 *
 * Written here because no npm package shapes TCP streams per site with a cut at a byte count
 * (throttle libraries limit one stream's rate, nothing more).
 */

export interface SiteStats {
  node: string
  vmid: number
  name?: string
  /** The `sites` key that matched, if any. */
  profile?: string
  /** Payload bytes delivered host → guest and guest → host. */
  bytesDown: number
  bytesUp: number
  /** Bytes that crossed the link, lost segments included. */
  wireDown: number
  wireUp: number
  lostSegments: number
  connections: number
  open: number
  /** The link is cut (cut_at_byte reached, or down). */
  cut: boolean
  cuts: number
}


interface Conn {
  guest: Socket
  target?: Socket
  down?: Flow
  up?: Flow
}

/** One site's link: both directions, its connections and counters. */
class Link implements PipeLink {
  profile: LinkProfile
  profileKey: string | undefined
  #profileJson: string
  bytesSinceProfile = 0
  cut: boolean
  readonly down: Pipe
  readonly up: Pipe
  readonly conns = new Set<Conn>()
  readonly stats: SiteStats

  constructor(
    readonly sim: LinkSimulator,
    readonly site: SiteIdentity,
    readonly key: string,
  ) {
    const {profile, key: pk} = profileFor(sim.config, site)
    this.profile = profile
    this.profileKey = pk
    this.#profileJson = JSON.stringify(profile)
    this.cut = profile.down
    this.down = new Pipe(this, 'down')
    this.up = new Pipe(this, 'up')
    this.stats = {node: site.node, vmid: site.vmid, name: site.name, profile: pk, bytesDown: 0, bytesUp: 0, wireDown: 0, wireUp: 0, lostSegments: 0, connections: 0, open: 0, cut: this.cut, cuts: 0}
  }

  /** The configuration's seed: the losses of this link are drawn from it. */
  get seed(): number {
    return this.sim.seed
  }

  /** A new configuration: a changed profile starts a new cut count (and may restore the link). */
  reconfigure(): void {
    const {profile, key} = profileFor(this.sim.config, this.site)
    const json = JSON.stringify(profile)
    this.profileKey = key
    this.stats.profile = key
    if (json === this.#profileJson) return
    this.#profileJson = json
    this.profile = profile
    this.bytesSinceProfile = 0
    if (profile.down) this.cutNow('down')
    else this.cut = false
    this.stats.cut = this.cut
    this.down.kick()
    this.up.kick()
  }

  countWire(dir: 'down' | 'up', n: number): void {
    if (dir === 'down') this.stats.wireDown += n
    else this.stats.wireUp += n
    this.sim.changed()
  }

  countDelivered(dir: 'down' | 'up', n: number): void {
    if (dir === 'down') this.stats.bytesDown += n
    else this.stats.bytesUp += n
    this.sim.changed()
  }

  cutNow(reason: string): void {
    if (!this.cut) {
      this.stats.cuts++
      this.sim.log(`link-sim: ${this.key}: link cut (${reason}) after ${this.bytesSinceProfile} bytes; ${this.conns.size} connection(s) closed`)
    }
    this.cut = true
    this.stats.cut = true
    for (const c of [...this.conns]) this.close(c)
    this.sim.changed()
  }

  accept(guest: Socket, target: {host: string; port: number} | undefined): void {
    this.stats.connections++
    if (this.cut || !target) {
      guest.destroy()
      this.sim.changed()
      return
    }
    const c: Conn = {guest}
    this.conns.add(c)
    this.stats.open = this.conns.size
    guest.pause()
    const t = connect({host: target.host, port: target.port, allowHalfOpen: true})
    c.target = t
    t.on('connect', () => {
      if (!this.conns.has(c)) return
      const flow = (source: Socket, sink: Socket): Flow => ({pending: [], pendingBytes: 0, ended: false, endSent: false, blockedUntil: 0, lastDeliverAt: 0, inflight: 0, sink, source})
      c.down = flow(t, guest)
      c.up = flow(guest, t)
      this.down.add(c.down)
      this.up.add(c.up)
      t.on('data', (d: Buffer) => this.down.push(c.down!, d))
      guest.on('data', (d: Buffer) => this.up.push(c.up!, d))
      t.on('end', () => this.down.end(c.down!))
      guest.on('end', () => this.up.end(c.up!))
      // a destination that had too much unread data: the link feeds it again
      guest.on('drain', () => this.down.kick())
      t.on('drain', () => this.up.kick())
      guest.resume()
    })
    const done = () => {
      // both directions finished, or one side failed: the connection is over
      if (!this.conns.has(c)) return
      const finished = (f: Flow | undefined) => !f || f.endSent || f.sink.destroyed
      const downLeft = c.down ? c.down.pendingBytes + c.down.inflight : 0
      if (guest.destroyed || (finished(c.down) && finished(c.up)) || (t.destroyed && downLeft === 0)) this.close(c)
    }
    for (const s of [t, guest]) {
      s.on('error', () => this.close(c))
      s.on('close', done)
      s.on('finish', done)
    }
    this.sim.changed()
  }

  close(c: Conn): void {
    if (!this.conns.delete(c)) return
    // what was written to the guest before the end (the last bytes before a cut) still reaches it
    flushThenDestroy(c.guest)
    c.target?.destroy()
    if (c.down) this.down.remove(c.down)
    if (c.up) this.up.remove(c.up)
    this.stats.open = this.conns.size
    this.sim.changed()
  }

  closeAll(): void {
    for (const c of [...this.conns]) this.close(c)
    this.down.clear()
    this.up.clear()
  }
}

function flushThenDestroy(s: Socket): void {
  if (s.destroyed) return
  if (s.writableLength === 0) {
    s.destroy()
    return
  }
  const t = setTimeout(() => s.destroy(), 2000)
  s.end(() => {
    clearTimeout(t)
    s.destroy()
  })
}

export interface LinkSimulatorOptions {
  /** The YAML file (read now and again whenever it changes); absent file = no uplink ports, no shaping. */
  configFile?: string
  /** A configuration given directly (tests; ignored when configFile is set). */
  config?: LinkSimConfig
  /** Where the per-site counters are written (JSON, at most every 250 ms while they change). */
  statsFile?: string
  log?: (line: string) => void
}

export interface Attachment {
  /** The listening address (a socket path, `\0`-prefixed for an abstract one, or host:port). */
  address: string
  close(): Promise<void>
}

export class LinkSimulator {
  config: LinkSimConfig
  readonly #links = new Map<string, Link>()
  readonly #servers = new Map<string, Server[]>()
  readonly #opts: LinkSimulatorOptions
  /** Directory targets ({dir}) → the lab's HTTP server of that directory, started when first used. */
  readonly #stores = new Map<string, Promise<StaticStore>>()
  #statsTimer: NodeJS.Timeout | undefined
  #closed = false

  constructor(opts: LinkSimulatorOptions = {}) {
    this.#opts = opts
    this.config = opts.config ?? emptyLinkSimConfig()
  }

  get seed(): number {
    return this.config.seed
  }

  log(line: string): void {
    this.#opts.log?.(line)
  }

  /** Reads the configuration file (if any) and follows its changes. */
  async start(): Promise<void> {
    const file = this.#opts.configFile
    if (!file) return
    await this.reload()
    watchFile(file, {interval: 250, persistent: false}, (cur, prev) => {
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) void this.reload()
    })
  }

  /** Reads the file again; a bad file is logged and the previous configuration stays. */
  async reload(): Promise<void> {
    const file = this.#opts.configFile
    if (!file) return
    try {
      this.setConfig(await loadLinkSimFile(file))
    } catch (error) {
      const code = (error as {message?: string}).message ?? String(error)
      if (/ENOENT/.test(code)) this.setConfig(emptyLinkSimConfig())
      else this.log(`link-sim: ${code} (the previous configuration stays)`)
    }
  }

  setConfig(cfg: LinkSimConfig): void {
    this.config = cfg
    for (const l of this.#links.values()) l.reconfigure()
  }

  /** Guest ports that lab VMs get an uplink for (read when a VM starts). */
  guestPorts(): number[] {
    return [...this.config.ports.keys()].sort((a, b) => a - b)
  }

  #link(site: SiteIdentity): Link {
    const key = `${site.node}/${site.vmid}`
    let l = this.#links.get(key)
    if (!l) {
      l = new Link(this, site, key)
      this.#links.set(key, l)
    } else if (site.name !== undefined && site.name !== l.site.name) {
      l.site.name = site.name
      l.stats.name = site.name
      l.reconfigure()
    }
    return l
  }

  /**
   * Listens for one site's connections to one guest port: each accepted connection is relayed to
   * that port's current target through the site's link. `listen` is a Unix socket path (a leading
   * NUL for Linux's abstract namespace) or a loopback TCP port (0 = any free port).
   */
  async attach(site: SiteIdentity, guestPort: number, listen: string | {host: string; port: number}): Promise<Attachment> {
    const link = this.#link(site)
    const server = createServer({pauseOnConnect: true, allowHalfOpen: true}, (sock) => {
      this.target(guestPort).then(
        (t) => link.accept(sock, t),
        (error: Error) => {
          this.log(`link-sim: guest port ${guestPort}: ${error.message}`)
          link.accept(sock, undefined)
        },
      )
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      if (typeof listen === 'string') server.listen(listen, () => resolve())
      else server.listen(listen.port, listen.host, () => resolve())
    })
    const key = link.key
    this.#servers.set(key, [...(this.#servers.get(key) ?? []), server])
    const a = server.address()
    const address = typeof a === 'string' ? a : a ? `${a.address}:${a.port}` : String(listen)
    return {
      address,
      close: async () => {
        await new Promise<void>((resolve) => server.close(() => resolve()))
        this.#servers.set(key, (this.#servers.get(key) ?? []).filter((s) => s !== server))
      },
    }
  }

  /** The TCP address behind a guest port now: a directory target is served by the lab on loopback. */
  async target(guestPort: number): Promise<{host: string; port: number} | undefined> {
    const t = this.config.ports.get(guestPort)
    if (!t || !('dir' in t)) return t
    let s = this.#stores.get(t.dir)
    if (!s) {
      s = serveDirectory(t.dir)
      this.#stores.set(t.dir, s)
      s.then((st) => this.log(`link-sim: serving ${t.dir} on http://${st.host}:${st.port}/`)).catch(() => this.#stores.delete(t.dir))
    }
    const st = await s
    return {host: st.host, port: st.port}
  }

  /** A VM stopped: its listeners and connections go (its counters stay for the stats). */
  async detach(node: string, vmid: number): Promise<void> {
    const key = `${node}/${vmid}`
    for (const s of this.#servers.get(key) ?? []) await new Promise<void>((resolve) => s.close(() => resolve()))
    this.#servers.delete(key)
    this.#links.get(key)?.closeAll()
  }

  stats(): Record<string, SiteStats> {
    return Object.fromEntries([...this.#links].map(([k, l]) => [k, {...l.stats}]))
  }

  changed(): void {
    const file = this.#opts.statsFile
    if (!file || this.#statsTimer || this.#closed) return
    this.#statsTimer = setTimeout(() => {
      this.#statsTimer = undefined
      void this.writeStats()
    }, 250)
  }

  async writeStats(): Promise<void> {
    const file = this.#opts.statsFile
    if (!file) return
    try {
      await mkdir(dirname(file), {recursive: true})
      const tmp = `${file}.tmp`
      await writeFile(tmp, JSON.stringify({updated: new Date().toISOString(), sites: this.stats()}, null, 1) + '\n')
      await rename(tmp, file)
    } catch (error) {
      this.log(`link-sim: stats not written: ${(error as Error).message}`)
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    if (this.#opts.configFile) unwatchFile(this.#opts.configFile)
    if (this.#statsTimer) clearTimeout(this.#statsTimer)
    this.#statsTimer = undefined
    for (const key of [...this.#servers.keys()]) {
      const [node, vmid] = key.split('/')
      await this.detach(node!, Number(vmid))
    }
    for (const l of this.#links.values()) l.closeAll()
    for (const s of this.#stores.values()) await (await s.catch(() => undefined))?.close()
    this.#stores.clear()
    await this.writeStats()
  }
}
