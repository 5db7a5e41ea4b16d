import {bech32} from '@scure/base'

/**
 * Strict check of an age recipient string, without loading age's cryptography at start-up:
 * bech32 (BIP-173, the encoding age uses) with its checksum, via @scure/base — the audited
 * encoder age-encryption itself relies on. Accepts the recipient types age-encryption can encrypt
 * to: X25519 (age1…, 32-byte key), hybrid post-quantum (age1pq1…), tag (age1tag1…, age1tagpq1…).
 * Returns why it is not valid, or undefined when it is.
 */
export function ageRecipientProblem(s: string): string | undefined {
  // one AMI often looks after several establishments: check each distinct key once
  if (checked.has(s)) return checked.get(s)
  const why = check(s)
  if (checked.size < 10_000) checked.set(s, why)
  return why
}

const checked = new Map<string, string | undefined>()

function check(s: string): string | undefined {
  if (!s.startsWith('age1')) return 'an age recipient starts with "age1"'
  if (s !== s.toLowerCase()) return 'an age recipient is written in lower case'
  let decoded: {prefix: string; words: number[]}
  try {
    decoded = bech32.decode(s as `${string}1${string}`, false)
  } catch (err) {
    return `not a valid bech32 string (${(err as Error).message.replace(/ in age1\S+/, '')}): a character is wrong or missing`
  }
  switch (decoded.prefix) {
    case 'age': {
      const bytes = bech32.fromWordsUnsafe(decoded.words)
      return bytes && bytes.length === 32 ? undefined : 'an X25519 age recipient holds a 32-byte key'
    }
    case 'age1pq':
    case 'age1tag':
    case 'age1tagpq':
      return undefined
    default:
      return `"${decoded.prefix}1…" recipients (age plugins) are not supported: use a native age key (age-keygen)`
  }
}
