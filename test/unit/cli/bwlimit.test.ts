import {format} from 'node:util'

import {Config} from '@oclif/core'
import {beforeAll, describe, expect, it} from 'vitest'

import RolloutStage from '../../../commands/rollout/stage.js'

/** `--bwlimit`: its parser, and how a bad value or a combination that cannot be honoured is refused. */
let config: Config
beforeAll(async () => {
  config = await Config.load({root: process.cwd()})
})

async function stage(argv: string[]): Promise<{envelope: {status: number; error?: {code: string; message: string}}; exitCode: number}> {
  let stdout = ''
  const {log} = console
  const ow = process.stdout.write.bind(process.stdout)
  console.log = (...a: unknown[]) => void (stdout += format(...a) + '\n')
  process.stdout.write = ((c: string | Uint8Array) => ((stdout += String(c)), true)) as typeof process.stdout.write
  try {
    await RolloutStage.run(['2026.12.0', '--all', '-i', 'inventory', '--json', ...argv], config)
  } catch {
    // the envelope is on stdout
  } finally {
    console.log = log
    process.stdout.write = ow
  }
  const exitCode = Number(process.exitCode ?? 0)
  process.exitCode = undefined
  return {envelope: JSON.parse(stdout) as {status: number; error?: {code: string; message: string}}, exitCode}
}

describe('--bwlimit', () => {
  it.each(['abc', '0', '-5', '2X'])('refuses %s as a usage error (exit 2) naming the flag', async (v) => {
    const r = await stage(['--bwlimit', v])
    expect(r.exitCode).toBe(2)
    expect(r.envelope.status).toBe(2)
    expect(r.envelope.error).toMatchObject({code: 'PGI_USAGE'})
    expect(r.envelope.error!.message).toMatch(/^--bwlimit: ".*" is not a rate/)
  })

  it('cannot limit what nodes download themselves: refused with --image-url before anything is read', async () => {
    const r = await stage(['--bwlimit', '2M', '--image-url', 'https://mirror.invalid/{file}'])
    expect(r.exitCode).toBe(2)
    expect(r.envelope.error!.message).toMatch(/--bwlimit limits uploads from this machine/)
  })

  it('parses KiB/s and binary units', async () => {
    const parse = RolloutStage.flags.bwlimit.parse as (v: string, ctx: unknown, opts: unknown) => Promise<number>
    expect(await parse('2048', {}, {})).toBe(2048)
    expect(await parse('512K', {}, {})).toBe(512)
    expect(await parse('2M', {}, {})).toBe(2048)
    expect(await parse('1.5MiB/s', {}, {})).toBe(1536)
    expect(await parse('1G', {}, {})).toBe(1024 * 1024)
  })
})
