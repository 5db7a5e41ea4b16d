import {homedir} from 'node:os'
import {join, resolve} from 'node:path'

/**
 * Where pgi keeps its state on this machine. Every location can be moved by an environment
 * variable, so CI and tests can run side by side.
 */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PGI_STATE_DIR) return resolve(env.PGI_STATE_DIR)
  const base = env.XDG_STATE_HOME ? resolve(env.XDG_STATE_HOME) : join(homedir(), '.local', 'state')
  return join(base, 'pgi')
}

/** The age-encrypted secret store (`PGI_SECRETS_DIR`). */
export function secretsDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGI_SECRETS_DIR ? resolve(env.PGI_SECRETS_DIR) : join(stateDir(env), 'secrets')
}

/** Built images and their manifests (`PGI_IMAGES_DIR`). */
export function imagesDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGI_IMAGES_DIR ? resolve(env.PGI_IMAGES_DIR) : join(stateDir(env), 'images')
}

/** The default lab directory (`PGI_LAB_DIR`). */
export function labDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGI_LAB_DIR ? resolve(env.PGI_LAB_DIR) : join(stateDir(env), 'lab')
}

/** Local journals of fleet operations (deploy, rollout). */
export function journalDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(stateDir(env), 'journal')
}

/** The inventory location: `-i/--inventory`, then `PGI_INVENTORY`, then ./inventory. */
export function defaultInventoryPath(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.PGI_INVENTORY ?? 'inventory')
}

/** The root of the installed pgi package (for images/ and inventory/ shipped with it). */
export function packageRoot(): string {
  // this file is dist/src/paths.js (compiled) or src/paths.ts (tests): two levels up either way
  const here = new URL('.', import.meta.url).pathname
  return here.includes('/dist/src/') ? resolve(here, '..', '..') : resolve(here, '..')
}
