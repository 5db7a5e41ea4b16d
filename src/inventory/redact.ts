import type {YamlPath} from './types.js'

/**
 * Inventory messages quote values ("cores must be a whole number, not "deux""), which is what
 * makes them useful — except where the value is a secret someone put in the wrong place: a
 * Proxmox token written whole as `token.id: pgi@pve!deploy=<uuid>`, an AMI's age secret key pasted
 * instead of the public one, a password in a URL. Problems are printed, logged by CI and kept in
 * JSON reports: a message must never carry such a value. Three layers:
 * - secretLiteralKind() recognises secrets by their form, and the rules report each as
 *   `secret-literal` at its place (see findSecretLiterals in rules.ts);
 * - quote() shows a value in a message unless it looks like a secret or sits where secrets go
 *   (token, secret, password, … keys);
 * - redactSecrets() runs on every message and suggestion a ProblemList receives (source.ts), as
 *   the last guard for a message built from a value some other way (e.g. a YAML parser message).
 */

/** Secret forms, each with what to call it. Anchored versions are used on whole values. */
/**
 * `hint` is a substring every match holds: the regular expression runs only on texts that have it
 * (the check runs on every value of an inventory of a thousand establishments).
 */
const FORMS: {name: string; hint: string; re: RegExp}[] = [
  // a Proxmox VE API token with its secret: USER@REALM!TOKENID=SECRET (the Authorization header's
  // form, with or without its PVEAPIToken= prefix)
  {name: 'a Proxmox API token with its secret (…=SECRET)', hint: '=', re: /(?:PVEAPIToken=)?[^\s@=!"'{}[\],]+@[^\s!=@"'{}[\],]+![^\s=@!"'{}[\],]+=[^\s"'{}[\],]+/},
  // an age identity (the private key), e.g. pasted where the public key (age1…) goes
  {name: 'an age secret key (AGE-SECRET-KEY-1…)', hint: 'AGE-SECRET-KEY-', re: /AGE-SECRET-KEY-(?:PQ-)?1[0-9A-Za-z]+/},
  // a PEM private key (SSH, TLS)
  {name: 'a private key', hint: 'PRIVATE KEY-----', re: /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)/},
  // user:password@ in a URL
  {name: 'a password in a URL', hint: '@', re: /(?<=[a-z][a-z0-9+.-]*:\/\/)[^\s/@:]*:[^/@\n]*@/i},
]

/** A UUID: the form of Proxmox token secrets. Not reported on its own (ids may be UUIDs), but never quoted. */
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i

/** Keys under which values are secrets. */
const SECRET_KEY = /secret|passw|private|credential|api[_-]?key|^pass$|^pwd$/i

/** What kind of secret a whole value is, when it holds one of the recognised forms. */
export function secretLiteralKind(value: string): string | undefined {
  for (const f of FORMS) if (value.includes(f.hint) && f.re.test(value)) return f.name
  return undefined
}

/**
 * True when `path` is a place where secrets go: its key or one above it names one, or it is a
 * `token` written as one value (its id and secret together) instead of {id, secret}.
 */
export function isSecretPath(path: YamlPath): boolean {
  return path.at(-1) === 'token' || path.some((seg) => typeof seg === 'string' && SECRET_KEY.test(seg))
}

/** True when a text holds a secret form or a UUID: such a text is never shown. */
export function looksSecret(text: string): boolean {
  return secretLiteralKind(text) !== undefined || UUID.test(text)
}

/**
 * `"value"` for a message, or words that do not show it when it may be a secret. A long value is
 * cut (its start is enough to find it at the problem's line and column).
 */
export function quote(value: string, path?: YamlPath): string {
  if ((path && isSecretPath(path)) || looksSecret(value)) return 'a value not shown here (it may be a secret)'
  return `"${value.length > 80 ? `${value.slice(0, 60)}…" (${value.length} characters)` : `${value}"`}`
}

/** A message with every secret-looking part replaced by "[hidden]". */
export function redactSecrets(text: string): string {
  let out = text
  for (const f of FORMS) out = out.replace(new RegExp(f.re.source, f.re.flags.includes('g') ? f.re.flags : f.re.flags + 'g'), '[hidden]')
  return out.replace(new RegExp(UUID.source, 'gi'), '[hidden]')
}
