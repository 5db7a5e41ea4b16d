import {isUtf8} from 'node:buffer'

/**
 * Inventory files are UTF-8 (YAML 1.2 allows UTF-16 and UTF-32 too, but pgi reads UTF-8 only, as
 * the editors of the Régions' technicians write by default). A file in another encoding, e.g. one
 * saved as Latin-1 ("Lycée" with é as the single byte 0xE9), used to be read with U+FFFD in place
 * of each such byte, validate, and put "Lyc\uFFFDe" on every screen and VM name downstream: it is an
 * error at the first byte that is not UTF-8.
 */
export type Decoded = {ok: true; text: string} | {ok: false; problem: EncodingProblem}

export interface EncodingProblem {
  line: number
  column: number
  message: string
  suggestion: string
}

const UTF8_BOM = [0xef, 0xbb, 0xbf]
const decoder = new TextDecoder('utf-8', {fatal: true, ignoreBOM: false})

/** The text of a file (without a UTF-8 byte-order mark), or where and why it is not UTF-8. */
export function decodeUtf8(buf: Uint8Array): Decoded {
  // isUtf8 is Node's native check; the slower scan below runs only on a file that fails it
  if (isUtf8(buf)) return {ok: true, text: decoder.decode(buf)}
  return {ok: false, problem: encodingProblem(buf)}
}

function encodingProblem(all: Uint8Array): EncodingProblem {
  if ((all[0] === 0xff && all[1] === 0xfe) || (all[0] === 0xfe && all[1] === 0xff)) {
    return {
      line: 1,
      column: 1,
      message: 'the file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8',
      suggestion: 'save it as UTF-8 (in an editor: "Save with encoding", UTF-8; or iconv -f UTF-16 -t UTF-8)',
    }
  }
  const bom = UTF8_BOM.every((b, i) => all[i] === b)
  const buf = bom ? all.subarray(3) : all
  let first = -1
  let count = 0
  // text in an 8-bit encoding (Latin-1, Windows-1252) has no control characters; binary data has
  let control = false
  const lines = new Set<number>()
  let line = 1
  for (let i = 0; i < buf.length; ) {
    const b = buf[i]!
    if (b === 0x0a) line++
    else if ((b < 0x20 && b !== 0x09 && b !== 0x0d) || b === 0x7f) control = true
    const n = b < 0x80 ? 1 : sequenceLength(buf, i)
    if (n > 0) {
      i += n
      continue
    }
    if (first === -1) first = i
    count++
    lines.add(line)
    i++
  }
  const lineStart = buf.lastIndexOf(0x0a, first - 1) + 1
  const column = new TextDecoder('utf-8').decode(buf.subarray(lineStart, first)).length + 1
  const atLine = (lines.values().next().value as number | undefined) ?? 1
  const more = count > 1 ? ` (${count} such bytes, on ${lines.size} line${lines.size === 1 ? '' : 's'})` : ''
  return {
    line: atLine,
    column,
    message: `byte 0x${buf[first]!.toString(16).toUpperCase().padStart(2, '0')} is not UTF-8${more}: the file must be saved as UTF-8${!control ? '; it looks like Latin-1 or Windows-1252' : ''}`,
    suggestion: !control
      ? 'convert it: iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE.new (then check the accents and replace the file), or "Save with encoding: UTF-8" in the editor'
      : 'save it as UTF-8 ("Save with encoding: UTF-8" in the editor); if it holds binary data, it is not an inventory file',
  }
}

/**
 * Length of the well-formed UTF-8 sequence starting at `i` (a lead byte ≥ 0x80), 0 if it is not
 * one: Table 3-7 of the Unicode standard (no overlong forms, no surrogates, nothing past U+10FFFF).
 * Written here because Node says whether a buffer is UTF-8 (isUtf8) but not where it is not.
 */
function sequenceLength(b: Uint8Array, i: number): number {
  const c = b[i]!
  const cont = (k: number, lo = 0x80, hi = 0xbf): boolean => i + k < b.length && b[i + k]! >= lo && b[i + k]! <= hi
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0
  if (c === 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0
  if ((c >= 0xe1 && c <= 0xec) || c === 0xee || c === 0xef) return cont(1) && cont(2) ? 3 : 0
  if (c === 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0
  if (c === 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0
  if (c >= 0xf1 && c <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0
  if (c === 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0
  return 0
}
