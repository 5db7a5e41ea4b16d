/**
 * Sizes written the way Proxmox VE, qemu-img and image recipes write them: a number with an
 * optional binary unit, `32G`, `512M`, `1.5T`, `8589934592`, `512MiB`. The one parser of sizes:
 * PVE's disk options (`size=32G`), the lab's disk sizes (`STORAGE:32`, resize `+2G`, where a bare
 * number is GiB), and image recipes (`3G`, whose own rule on top is whole MiB or GiB).
 */

export type SizeUnit = 'B' | 'K' | 'M' | 'G' | 'T'

const FACTOR: Record<SizeUnit, number> = {B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40}

// a leading "+" (PVE's resize `+2G`) is read as the size it adds
const SIZE_RE = /^\+?(\d+(?:\.\d+)?)\s*([KMGT])?(?:iB)?$/i

/** Bytes of `text`, or undefined when it is not a size. `defaultUnit` is the unit of a bare number (bytes unless told). */
export function tryParseSize(text: string, defaultUnit: SizeUnit = 'B'): number | undefined {
  const m = SIZE_RE.exec(text.trim())
  if (!m) return undefined
  const unit = (m[2]?.toUpperCase() ?? defaultUnit) as SizeUnit
  return Math.round(Number(m[1]) * FACTOR[unit])
}

/** Bytes of `text`; throws PVE's own words ("unable to parse size '…'") when it is not a size. */
export function parseSize(text: string, defaultUnit: SizeUnit = 'B'): number {
  const n = tryParseSize(text, defaultUnit)
  if (n === undefined) throw new RangeError(`unable to parse size '${text}'`)
  return n
}

/**
 * Bytes for people in decimal units, as disk tools show them: "41.2 MB". `kilo` is how a table
 * writes the thousand ('kB' in `pgi status`, 'KB' in `pgi db`), `digits(v)` how many decimals the
 * shown value gets (`pgi db`: none from 10 up).
 */
export function formatDecimalBytes(n: number, opts: {kilo: 'kB' | 'KB'; digits: (v: number) => number}): string {
  const units = ['B', opts.kilo, 'MB', 'GB', 'TB']
  let v = n
  let i = 0
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000
    i++
  }
  return `${i === 0 ? v : v.toFixed(opts.digits(v))} ${units[i]}`
}
