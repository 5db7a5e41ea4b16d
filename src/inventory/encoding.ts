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
  /** not-utf8, or yaml-syntax for a character YAML does not allow anywhere (a control character) */
  rule: 'not-utf8' | 'yaml-syntax'
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
  if (!isUtf8(buf)) return {ok: false, problem: encodingProblem(buf)}
  const text = decoder.decode(buf)
  // YAML allows no control character but tab, line feed and carriage return (and NEL), anywhere;
  // yaml reads them into values, where a NUL or an escape sequence would reach VM names and screens
  const c = NOT_PRINTABLE.exec(text)
  if (c) {
    const lineStart = text.lastIndexOf('\n', c.index - 1) + 1
    const line = (text.slice(0, lineStart).match(/\n/g)?.length ?? 0) + 1
    const code = c[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')
    return {
      ok: false,
      problem: {
        rule: 'yaml-syntax',
        line,
        column: c.index - lineStart + 1,
        message: `control character U+${code} is not allowed in YAML: the file is not read further`,
        suggestion: 'remove it (an editor may show it as ^@, ^[ or a box); if the file holds binary data, it is not an inventory file',
      },
    }
  }
  return {ok: true, text}
}

/** Characters outside YAML's printable set (c-printable), but for the BMP's non-characters. */
const NOT_PRINTABLE = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u0084\u0086-\u009F\uFFFE\uFFFF]/

function encodingProblem(all: Uint8Array): EncodingProblem {
  if ((all[0] === 0xff && all[1] === 0xfe) || (all[0] === 0xfe && all[1] === 0xff)) {
    return {
      rule: 'not-utf8',
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
    rule: 'not-utf8',
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
