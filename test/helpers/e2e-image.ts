import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, readFile, rm} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {buildImage} from '../../src/image/build.js'
import {listImages} from '../../src/image/images.js'
import {lockPath} from '../../src/image/lock.js'
import {loadRecipe, majorOf} from '../../src/image/recipe.js'
import type {Io} from '../../src/io.js'
import {stateDir} from '../../src/paths.js'

/**
 * The pgi-tryton image of a line (1: Debian 12 / Tryton 6.0, the default; 2: Debian 13 / Tryton
 * 7.0) for end-to-end tests, built once per recipe + lock and cached under
 * <stateDir>/e2e-image-cache/<key>/ so one CI run builds it once for every e2e file, or taken from
 * PGI_E2E_IMAGES_DIR (its latest version of that line).
 */
export async function cachedPgiImage(io: Io, line = '1'): Promise<{root: string; version: string}> {
  const ofLine = (i: {name: string; version: string}) => i.name === 'pgi-tryton' && majorOf(i.version) === line
  if (process.env.PGI_E2E_IMAGES_DIR) {
    const root = resolve(process.env.PGI_E2E_IMAGES_DIR)
    const have = (await listImages({root})).filter(ofLine).slice(-1)[0]
    if (!have) throw new Error(`no pgi-tryton ${line}.x image in PGI_E2E_IMAGES_DIR=${root}`)
    return {root, version: have.version}
  }
  const ref = line === '1' ? 'pgi-tryton' : `pgi-tryton@${line}`
  const recipe = await loadRecipe(ref)
  const lock = existsSync(lockPath(recipe)) ? await readFile(lockPath(recipe)) : Buffer.from('')
  const key = createHash('sha256').update(recipe.digest).update(lock).digest('hex').slice(0, 16)
  const dir = join(stateDir(), 'e2e-image-cache', key)
  const have = (await listImages({root: dir})).find(ofLine)
  if (have) return {root: dir, version: have.version}
  await rm(dir, {recursive: true, force: true})
  await mkdir(dir, {recursive: true})
  const r = await buildImage({recipe: ref, out: dir, io, allowLockDrift: true, env: {...process.env, SOURCE_DATE_EPOCH: process.env.SOURCE_DATE_EPOCH ?? '1767225600'}})
  return {root: dir, version: r.version}
}
