import {readFile, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {AccessConfig} from './access.js'
import type {LabStateFile} from './lab.js'
import {startRuntime} from './runtime.js'

/**
 * The lab daemon: ONE process serving every lab node (`pgi lab start` starts it in the background
 * with `node daemon.js <lab dir>`). It reads <dir>/lab.json and <dir>/access.json, listens, writes
 * <dir>/run/daemon.json ({pid, ports}) when ready, and on SIGTERM/SIGINT stops the backend (and with
 * it every VM process), closes the listeners and removes run/daemon.json. SIGHUP re-reads access.json.
 */
async function main(): Promise<void> {
  const dir = process.argv[2]
  if (!dir) throw new Error('usage: daemon.js <lab dir>')
  const state = JSON.parse(await readFile(join(dir, 'lab.json'), 'utf8')) as LabStateFile
  const access = JSON.parse(await readFile(join(dir, 'access.json'), 'utf8')) as AccessConfig
  const log = (line: string) => process.stdout.write(`${new Date().toISOString()} ${line}\n`)
  const rt = await startRuntime({
    dir,
    nodes: state.nodes.map((n) => n.name),
    backend: state.backend,
    pveVersion: state.pveVersion,
    access,
    faults: state.faults,
    timeScale: state.timeScale,
    authFailDelayMs: state.authFailDelayMs,
    ports: Object.fromEntries(state.nodes.filter((n) => n.port).map((n) => [n.name, n.port!])),
    log,
  })
  let stopping = false
  const stop = async (signal: string) => {
    if (stopping) return
    stopping = true
    log(`${signal}: stopping the lab`)
    const hard = setTimeout(() => process.exit(1), 60_000)
    hard.unref()
    try {
      await rt.close()
    } finally {
      await rm(join(dir, 'run', 'daemon.json'), {force: true})
      log('stopped')
      process.exit(0)
    }
  }
  process.on('SIGTERM', () => void stop('SIGTERM'))
  process.on('SIGINT', () => void stop('SIGINT'))
  // access.json is the lab's user.cfg: users, tokens, roles and ACLs changed there apply at once on
  // SIGHUP, as pveum's changes do on PVE (e.g. an AMI's token granted on one VM)
  process.on('SIGHUP', () => {
    void (async () => {
      try {
        rt.api.access.setConfig(JSON.parse(await readFile(join(dir, 'access.json'), 'utf8')) as AccessConfig)
        log('SIGHUP: access.json reloaded')
      } catch (e) {
        log(`SIGHUP: access.json not reloaded, the previous one stays: ${e instanceof Error ? e.message : String(e)}`)
      }
    })()
  })
  await writeFile(join(dir, 'run', 'daemon.json'), JSON.stringify({pid: process.pid, ports: rt.ports, fingerprints: rt.fingerprints, started: Date.now()}))
  log(`lab daemon ${process.pid} serving ${Object.entries(rt.ports).map(([n, p]) => `${n}=127.0.0.1:${p}`).join(' ')}`)
}

main().catch((e: unknown) => {
  process.stderr.write(`lab daemon failed: ${e instanceof Error ? e.stack : String(e)}\n`)
  process.exit(1)
})
