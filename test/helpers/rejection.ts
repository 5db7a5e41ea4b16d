import type {PgiError} from '../../src/errors.js'

/** The error `p` rejects with (a test fails when it resolves): for asserting typed errors. */
export async function rejection(p: Promise<unknown>): Promise<PgiError> {
  try {
    await p
  } catch (err) {
    return err as PgiError
  }
  throw new Error('expected a rejection')
}
