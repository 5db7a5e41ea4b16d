/**
 * pgi as a library: the engine behind the CLI. Commands are thin shells over these services.
 */
export * from './errors.js'
export * from './exit-codes.js'
export * from './io.js'
export * from './paths.js'
export * from './secret.js'
export type * from './inventory/types.js'
export * from './secrets/identity.js'
export * from './secrets/store.js'
