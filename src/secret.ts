import {inspect} from 'node:util'

/**
 * A secret value (password, token secret, private key). It cannot be printed, logged or
 * serialised by accident: toString/toJSON/inspect all give "[secret]". Read it with `.reveal()`
 * only at the point where it is handed to its one legitimate consumer (an HTTP header, the
 * guest agent's stdin, an age-encrypted file).
 */
export class Secret {
  readonly #value: string
  constructor(value: string) {
    this.#value = value
  }

  reveal(): string {
    return this.#value
  }

  toString(): string {
    return '[secret]'
  }

  toJSON(): string {
    return '[secret]'
  }

  [inspect.custom](): string {
    return '[secret]'
  }
}
