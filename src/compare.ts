/**
 * Sorting identifiers (UAIs, hypervisor and node names, rule ids): code-unit order, which is
 * stable across machines and locales. Not String#localeCompare: the process's first call
 * initialises ICU's collator (~15 ms, a visible share of a CLI start), and every call after it is
 * several times slower than this, for identifiers that are ASCII anyway.
 */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
