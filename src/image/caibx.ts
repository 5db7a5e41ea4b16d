/**
 * casync's blob index (.caibx): the chunks of a disk in order. Its own module because both the
 * publisher (src/image/publish.ts) and the binary patches (src/image/patch.ts) read it.
 */
import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'

/** One entry of a casync index: the chunk's id (hex) and its uncompressed size. */
export interface IndexChunk {
  id: string
  size: number
}

const CA_FORMAT_INDEX = 0x96824d9c7b129ff9n
const CA_FORMAT_TABLE = 0xe75b9e112f17417dn
const CA_FORMAT_TABLE_TAIL_MARKER = 0x4b4f050e5549ecd1n

/**
 * The chunks of a casync blob index (.caibx), in order. casync prints no machine-readable list
 * and no npm package reads the format, so it is read here from its published layout (casync's
 * caformat.h): a 48-byte index header, a table header, then 40-byte items (end offset, 32-byte
 * chunk id) up to a tail that starts with two zero words and ends with a marker.
 */
export function parseCaibx(buf: Buffer): IndexChunk[] {
  const bad = (why: string) => new UserError(ErrorCode.IMAGE_INVALID, `not a casync blob index: ${why}`, {exitCode: ExitCode.REFUSED})
  if (buf.length < 48 + 16 + 40) throw bad('too short')
  if (buf.readBigUInt64LE(0) !== 48n || buf.readBigUInt64LE(8) !== CA_FORMAT_INDEX) throw bad('no index header')
  if (buf.readBigUInt64LE(48) !== 0xffffffffffffffffn || buf.readBigUInt64LE(56) !== CA_FORMAT_TABLE) throw bad('no chunk table')
  const out: IndexChunk[] = []
  let prev = 0
  let pos = 64
  for (; pos + 40 <= buf.length; pos += 40) {
    const end = Number(buf.readBigUInt64LE(pos))
    if (end === 0) break
    if (end <= prev) throw bad(`chunk offsets go backwards at item ${out.length}`)
    out.push({id: buf.subarray(pos + 8, pos + 40).toString('hex'), size: end - prev})
    prev = end
  }
  if (pos + 40 > buf.length || buf.readBigUInt64LE(pos + 32) !== CA_FORMAT_TABLE_TAIL_MARKER) throw bad('no table tail')
  return out
}
