import {describe, expect, it} from 'vitest'

import {closest, commandNotFound, toPgiError} from '../../../src/cli/usage.js'
import {UsageError} from '../../../src/errors.js'

/** Usage errors from the command line: names what is at fault, and what was probably meant. */
const IDS = ['status', 'deploy', 'destroy', 'rollout:start', 'rollout:stage', 'rollout:status', 'rollout:plan', 'inventory:validate', 'inventory:list', 'lab:start', 'lab:stop']
const TOPICS = ['rollout', 'inventory', 'lab', 'credentials']

describe('commandNotFound', () => {
  it('suggests within the topic, comparing the mistyped word', () => {
    expect(commandNotFound('statsu', IDS, TOPICS)).toMatchObject({exitCode: 2, where: {command: 'statsu'}, details: {didYouMean: ['status']}})
    expect(commandNotFound('rollout:strat', IDS, TOPICS)).toMatchObject({where: {command: 'rollout strat'}, details: {didYouMean: ['rollout start']}})
    expect(commandNotFound('invntory:list', IDS, TOPICS)).toMatchObject({where: {command: 'invntory'}, details: {didYouMean: ['inventory list']}})
    expect(commandNotFound('frobnicate', IDS, TOPICS).details).toBeUndefined()
  })

  it('a known command followed by words it does not take is an unexpected argument', () => {
    const e = commandNotFound('inventory:validate:extra', IDS, TOPICS)
    expect(e.message).toBe('unexpected argument: extra (`pgi inventory validate` takes none)')
    expect(e.where).toEqual({command: 'inventory validate', argument: 'extra'})
  })

  it('closest keeps to small edits', () => {
    expect(closest('statsu', ['status', 'stage', 'start'])).toEqual(['status'])
    expect(closest('x', ['status'])).toEqual([])
  })
})

describe('toPgiError', () => {
  it('names the flag of a usage error raised after parsing, when it is one of the command\'s', () => {
    const e = toPgiError(new UsageError('--waves names unknown ring(s): gold'), {flags: ['waves', 'all']})
    expect(e.where).toEqual({flag: 'waves'})
    expect(toPgiError(new UsageError('--nope is odd'), {flags: ['waves']}).where).toBeUndefined()
  })

  it('a flag parser failing: the flag and why, on one line', () => {
    const err = new Error('Parsing --bwlimit \n\t--bwlimit: "x" is not a rate\nSee more help with --help')
    expect(toPgiError(err)).toMatchObject({exitCode: 2, message: '--bwlimit: "x" is not a rate', where: {flag: 'bwlimit'}})
  })

  it("oclif's validation errors: a missing required flag named with its dashes, without oclif's header", async () => {
    const {Errors} = await import('@oclif/core')
    const err = new Errors.CLIError('The following error occurred:\n  Missing required flag to\nSee more help with --help', {exit: 2})
    expect(toPgiError(err)).toMatchObject({exitCode: 2, message: 'missing required flag --to', where: {flag: 'to'}})
  })
})
