// The benchmarks' way to run pgi as its users do: the bundled CLI (bin/run.js) in its own
// process, with the benchmark's environment. Shared by bench/db-class.mjs and bench/backup.mjs.
import {spawn} from 'node:child_process'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')

/**
 * Runs `pgi args` with `env`; resolves to its exit code, output, the --json envelope (undefined
 * when stdout is not JSON) and its wall time in ms. Killed (SIGKILL) after timeoutMs.
 */
export function runPgi(env, args, timeoutMs = 60 * 60_000) {
  return new Promise((res, rej) => {
    const t0 = performance.now()
    const child = spawn(process.execPath, [join(root, 'bin', 'run.js'), ...args], {env, stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', rej)
    child.on('close', (code) => {
      clearTimeout(timer)
      let json
      try {
        json = JSON.parse(stdout)
      } catch {
        json = undefined
      }
      res({code, stdout, stderr, json, ms: Math.round(performance.now() - t0)})
    })
  })
}
