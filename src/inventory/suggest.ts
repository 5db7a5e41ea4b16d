import {distance} from 'fastest-levenshtein'

/**
 * "Did you mean …?": the candidate closest to `input` by edit distance (case-insensitive), when it
 * is close enough to be a plausible typo (at most 1 edit for short words, a third of the length
 * for longer ones). Returns undefined when nothing is close.
 */
export function didYouMean(input: string, candidates: Iterable<string>): string | undefined {
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
  const limit = Math.max(1, Math.floor(Math.max(needle.length, best.length) / 3))
  return bestD <= limit ? best : undefined
}

/** `did you mean "x"?` or, when nothing is close, the list of what is allowed (shortened). */
export function suggestAmong(input: string, candidates: string[], what: string): string {
  const close = didYouMean(input, candidates)
  if (close !== undefined) return `did you mean "${close}"?`
  if (candidates.length === 0) return `there is no ${what} defined`
  const shown = candidates.slice(0, 8).join(', ')
  return `${what}: ${shown}${candidates.length > 8 ? `, … (${candidates.length} in all)` : ''}`
}
