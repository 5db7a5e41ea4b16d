// Preloaded into a pgi process by bench/status.mjs (NODE_OPTIONS=--require): at exit, writes the
// process's CPU time (user + system, ms) and the number of HTTP client requests the process made
// (node:http's `http.client.request.start` diagnostics channel: every Proxmox API request goes
// through node:https; undici's channel is counted too, should a request go through it) to
// the file named by PGI_BENCH_CPU_FILE. A preload, because Node gives no rusage of a child.
'use strict'
const dc = require('node:diagnostics_channel')
const {writeFileSync} = require('node:fs')
let requests = 0
const onCreate = () => {
  requests++
}
dc.subscribe('http.client.request.start', onCreate)
dc.subscribe('undici:request:create', onCreate)
process.on('exit', () => {
  const u = process.cpuUsage()
  writeFileSync(process.env.PGI_BENCH_CPU_FILE, JSON.stringify({cpuMs: Math.round((u.user + u.system) / 1000), requests}))
})
