import {createInterface} from 'node:readline/promises'

import {FlagRequiredError, SafetyRefusal} from '../errors.js'

/**
 * Questions to the person at the terminal. Without a terminal (CI, pipes) nothing is ever asked:
 * the caller's flag is required instead.
 */
export interface Asker {
  readonly interactive: boolean
  ask(question: string): Promise<string>
}

export const terminalAsker = (interactive: boolean): Asker => ({
  interactive,
  async ask(question: string): Promise<string> {
    const rl = createInterface({input: process.stdin, output: process.stderr})
    try {
      return (await rl.question(question)).trim()
    } finally {
      rl.close()
    }
  },
})

/** Yes/no confirmation: `--yes` answers it; without a TTY and without `--yes` it fails. */
export async function confirm(asker: Asker, question: string, opts: {yes: boolean; flag?: string}): Promise<void> {
  if (opts.yes) return
  if (!asker.interactive) throw new FlagRequiredError(opts.flag ?? '--yes', question)
  const a = (await asker.ask(`${question} [y/N] `)).toLowerCase()
  if (a !== 'y' && a !== 'yes') throw new SafetyRefusal('not confirmed: nothing was done', {suggestions: ['Answer "y" to go on.']})
}

/** Confirmation by typing a word (a UAI before destroying data). `--yes` answers it in CI. */
export async function confirmTyped(asker: Asker, question: string, expected: string, opts: {yes: boolean}): Promise<void> {
  if (opts.yes) return
  if (!asker.interactive) throw new FlagRequiredError('--yes', question)
  const a = await asker.ask(`${question}\nType ${expected} to confirm: `)
  if (a !== expected) throw new SafetyRefusal(`confirmation did not match "${expected}": nothing was done`)
}
