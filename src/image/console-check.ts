import {X509Certificate} from 'node:crypto'
import type {IncomingHttpHeaders} from 'node:http'
import {request} from 'node:https'

import {ErrorCode, UserError} from '../errors.js'
import type {Secret} from '../secret.js'

/**
 * The teachers' console of a booted image (`pgi image test`): reached over HTTPS through the
 * forwarded port, with TLS verified against the VM's own certificate (read from the guest, its
 * SHA-256 fingerprint compared with the one pgi-tls recorded), the login page served, and the
 * AMI's login (the SQL administrator's codes, checked by PostgreSQL in the guest) accepted.
 */
export interface ConsoleCheck {
  fingerprint: string
  loginPageMs?: number
  amiLoggedIn: boolean
}

interface Answer {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

function call(port: number, ca: string, path: string, opts: {method?: string; body?: string; headers?: Record<string, string>} = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {host: '127.0.0.1', port, path, method: opts.method ?? 'GET', ca, headers: opts.headers, timeout: 60_000},
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => (body += d))
        res.on('end', () => resolve({status: res.statusCode ?? 0, headers: res.headers, body}))
      },
    )
    req.on('timeout', () => req.destroy(new Error(`no answer from https://127.0.0.1:${port}${path} within 60 s`)))
    req.on('error', reject)
    req.end(opts.body)
  })
}

const fail = (msg: string) => new UserError(ErrorCode.IMAGE_INVALID, `teachers' console: ${msg}`)

export async function checkConsole(port: number, certPem: string, recordedSha256: string, sqlAdmin: {login: string; password: Secret}): Promise<ConsoleCheck> {
  const fingerprint = new X509Certificate(certPem).fingerprint256
  if (fingerprint !== recordedSha256) throw fail(`the certificate's SHA-256 ${fingerprint} is not the one recorded in /run/pgi/tls.json (${recordedSha256})`)
  const login = await call(port, certPem, '/console/connexion')
  if (login.status !== 200 || !login.body.includes('Connexion des enseignants')) throw fail(`the login page answered HTTP ${login.status}`)
  const timing = /app;dur=([\d.]+)/.exec(String(login.headers['server-timing'] ?? ''))
  const form = await call(port, certPem, '/console/ami/connexion')
  const cookie = String(form.headers['set-cookie']?.[0] ?? '').split(';')[0]
  const csrf = /name="csrf_token" value="([^"]+)"/.exec(form.body)?.[1]
  if (!cookie || !csrf) throw fail('the AMI login page set no session or CSRF token')
  const body = new URLSearchParams({csrf_token: csrf, login: sqlAdmin.login, password: sqlAdmin.password.reveal()}).toString()
  const posted = await call(port, certPem, '/console/ami/connexion', {
    method: 'POST',
    body,
    headers: {'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': String(Buffer.byteLength(body)), Cookie: cookie, Origin: `https://127.0.0.1:${port}`},
  })
  if (posted.status !== 302 || !String(posted.headers.location ?? '').endsWith('/console/ami/')) {
    throw fail(`the AMI's login with the SQL administrator's codes was refused (HTTP ${posted.status})`)
  }
  const session = String(posted.headers['set-cookie']?.[0] ?? '').split(';')[0]
  const home = await call(port, certPem, '/console/ami/', {headers: {Cookie: session}})
  if (home.status !== 200 || !home.body.includes('Comptes des enseignants')) throw fail(`the AMI's page answered HTTP ${home.status}`)
  return {fingerprint, loginPageMs: timing ? Number(timing[1]) : undefined, amiLoggedIn: true}
}
