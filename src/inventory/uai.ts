/**
 * UAI (Unité Administrative Immatriculée): the national identifier of a French school, 7 digits and
 * a check letter. The letter is "ABCDEFGHJKLMNPRSTUVWXYZ"[n mod 23] where n is the 7-digit number
 * (I, O and Q are left out). Example: 0130040Y.
 *
 * No maintained npm package implements this, and it is three lines: written here.
 */

/** The 23 check letters, indexed by n mod 23. */
export const UAI_LETTERS = 'ABCDEFGHJKLMNPRSTUVWXYZ'

const UAI_SHAPE = /^\d{7}[A-Z]$/

/** The check letter of a 7-digit UAI number ("0130040" → "Y"). Throws on anything but 7 digits. */
export function uaiCheckLetter(digits: string): string {
  if (!/^\d{7}$/.test(digits)) throw new RangeError(`a UAI number is 7 digits, got "${digits}"`)
  return UAI_LETTERS[Number.parseInt(digits, 10) % 23]!
}

/** True when `s` is 7 digits followed by the right check letter (upper case). */
export function isValidUai(s: string): boolean {
  return UAI_SHAPE.test(s) && uaiCheckLetter(s.slice(0, 7)) === s[7]
}

/** Why `s` is not a valid UAI, or undefined when it is. */
export function uaiProblem(s: string): {kind: 'format' | 'check-letter'; expected?: string} | undefined {
  const upper = s.toUpperCase()
  if (!UAI_SHAPE.test(upper)) return {kind: 'format'}
  const expected = upper.slice(0, 7) + uaiCheckLetter(upper.slice(0, 7))
  if (s !== expected) return {kind: 'check-letter', expected}
  return undefined
}

/** The UAI of number n (0 ≤ n < 10^7), zero-padded, with its check letter: uaiFromNumber(130040) → "0130040Y". */
export function uaiFromNumber(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n >= 10_000_000) throw new RangeError(`a UAI number is an integer in 0…9999999, got ${n}`)
  const digits = String(n).padStart(7, '0')
  return digits + uaiCheckLetter(digits)
}
