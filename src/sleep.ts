/**
 * A wait that an AbortSignal cuts short (rejecting with the signal's reason). The abort listener
 * is removed when the wait ends, so a long-lived signal (a rollout's stop, a lab's shutdown) does
 * not collect one per poll. Not node:timers/promises' setTimeout: that one rejects with a fresh
 * AbortError, and callers here report the signal's own reason ("SIGINT", a deadline…).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const onAbort = (): void => {
      clearTimeout(t)
      reject(signal!.reason)
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, {once: true})
  })
}
