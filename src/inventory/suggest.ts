import {distance} from 'fastest-levenshtein'

/**
 * "Did you mean …?": the candidate closest to `input` by edit distance (case-insensitive), when it
 * is close enough to be a plausible typo (1 edit for words of up to 3 letters, else 2 or a third
 * of the length, whichever is more), or when one is an abbreviation of the other. Returns undefined when nothing is close.
 */
export function didYouMean(input: string, candidateList: Iterable<string>): string | undefined {
  const candidates = [...candidateList]
  const needle = input.toLowerCase()
  let best: string | undefined
  let bestD = Number.POSITIVE_INFINITY
  for (const c of candidates) {
    const d = distance(needle, c.toLowerCase())
    if (d < bestD) {
      best = c
      bestD = d
    }
  }
  if (best === undefined) return undefined
  // an abbreviation or a spelled-out form of a candidate ("tuesday" for "tue")
  if (needle.length >= 3) {
    const pre = candidates.find((c) => c.length >= 3 && (needle.startsWith(c.toLowerCase()) || c.toLowerCase().startsWith(needle)))
    if (pre !== undefined && bestD > 1) return pre
  }
  const len = Math.max(needle.length, best.length)
  const limit = len <= 3 ? 1 : Math.max(2, Math.floor(len / 3))
  return bestD <= limit ? best : undefined
}

/** `did you mean "x"?` or, when nothing is close, the list of what is allowed (shortened). */
export function suggestAmong(input: string, candidates: string[], what: string): string {
  const close = didYouMean(input, candidates)
  if (close !== undefined) return `did you mean "${close}"?`
  if (candidates.length === 0) return `there are no ${what}`
  const shown = candidates.slice(0, 8).join(', ')
  return `${what}: ${shown}${candidates.length > 8 ? `, … (${candidates.length} in all)` : ''}`
}
