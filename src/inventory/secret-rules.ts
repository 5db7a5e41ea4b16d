import {describePath, type ProblemList, type SourceFile, type YamlPath} from './source.js'
import {secretLiteralKind} from './redact.js'
import {envNameFor} from './schema-check.js'
import type {SecretRef} from './types.js'
import {isRecord} from './rule-values.js'

/** The inventory's rules about secrets: references to them ({env}, {store}) and secrets written in a file. */

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const STORE_KEY = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/

/** A secret reference: {env: NAME} or {store: key}. A literal secret is an error. */
export function checkSecret(src: SourceFile, path: YamlPath, v: unknown, hv: string, P: ProblemList): SecretRef | undefined {
  const how = `{env: ${envNameFor(hv)}} or {store: hypervisors/${hv}/token}`
  if (!isRecord(v)) {
    P.add(src, path, 'secret-literal', 'a secret is written in the inventory: secrets never go in YAML files', {
      suggestion: `write secret: ${how} (put the value in that variable, or in the secret store), and rotate this token: it has been written in a file`,
    })
    return undefined
  }
  const hasEnv = 'env' in v
  const hasStore = 'store' in v
  if (hasEnv && hasStore) {
    P.add(src, path, 'secret-ref', 'a secret reference names one source: env or store, not both', {suggestion: how})
    return undefined
  }
  if (!hasEnv && !hasStore) {
    P.add(src, path, 'secret-ref', 'a secret reference must be {env: NAME} or {store: key}', {suggestion: how})
    return undefined
  }
  if (hasEnv) {
    const name = v.env
    if (typeof name !== 'string' || !ENV_NAME.test(name)) {
      // not quoted: a value in the wrong place here may be the secret itself
      P.add(src, [...path, 'env'], 'secret-ref', 'env must name an environment variable (letters, digits and _, not starting with a digit)', {
        suggestion: `letters, digits and _, e.g. ${envNameFor(hv)}`,
      })
      return undefined
    }
    return {env: name}
  }
  const key = v.store
  if (typeof key !== 'string' || !STORE_KEY.test(key)) {
    P.add(src, [...path, 'store'], 'secret-ref', 'store must be a secret store key (lower-case path segments)', {
      suggestion: `lower-case path segments, e.g. hypervisors/${hv}/token`,
    })
    return undefined
  }
  return {store: key}
}

/**
 * `secret-literal` wherever a value (or a key) of a file has the form of a secret (redact.ts): a
 * Proxmox token with its secret, an age secret key, a private key, a password in a URL. Runs
 * after the other rules, and skips the places where one of them reported a secret-literal already
 * (token.secret, the URL). The message names the kind of secret, never the value.
 */
export function checkSecretLiterals(sources: SourceFile[], P: ProblemList): void {
  const reported = new Set(P.items.filter((p) => p.rule === 'secret-literal').map((p) => `${p.file}:${p.line}:${p.column}`))
  for (const src of sources) {
    // iterative, and bounded: the readers cap alias expansion at ~1,000,000 nodes. A node's path
    // is built only for a report (from its parent links): most values are not secrets.
    interface Node {
      v: unknown
      key: string | number | undefined
      up: Node | undefined
    }
    const pathOf = (n: Node): YamlPath => {
      const p: (string | number)[] = []
      for (let c: Node | undefined = n; c && c.key !== undefined; c = c.up) p.push(c.key)
      return p.reverse()
    }
    const report = (p: YamlPath, at: 'key' | 'value', kind: string) => {
      const ref = src.ref(p, at)
      if (reported.has(`${ref.file}:${ref.line}:${ref.column}`)) return
      reported.add(`${ref.file}:${ref.line}:${ref.column}`)
      P.add(src, p, 'secret-literal', `${describePath(p)} holds ${kind}: secrets never go in the inventory`, {at, suggestion: secretSuggestion(p, kind)})
    }
    const stack: Node[] = [{v: src.value, key: undefined, up: undefined}]
    for (let n = 0; stack.length > 0 && n < 2_000_000; n++) {
      const node = stack.pop()!
      const v = node.v
      if (typeof v === 'string') {
        const kind = secretLiteralKind(v)
        if (kind) report(pathOf(node), 'value', kind)
      } else if (Array.isArray(v)) {
        v.forEach((x, i) => stack.push({v: x, key: i, up: node}))
      } else if (isRecord(v)) {
        for (const [k, x] of Object.entries(v)) {
          const child = {v: x, key: k, up: node}
          const kind = secretLiteralKind(k)
          if (kind) report(pathOf(child), 'key', kind)
          stack.push(child)
        }
      }
    }
  }
}

function secretSuggestion(p: YamlPath, kind: string): string {
  const rotate = 'it has been written in a file (and maybe committed): replace it with a new one'
  if (kind.startsWith('an age secret key')) {
    return `an age public key starts with age1: \`age-keygen -y KEYFILE\` prints it from the secret key; ${rotate}`
  }
  if (kind.startsWith('a Proxmox API token')) {
    const hv = p[0] === 'hypervisors' && typeof p[1] === 'string' ? p[1] : 'NAME'
    return `write only the id (the part before "=") in token.id, and secret: {env: ${envNameFor(hv)}} or {store: hypervisors/${hv}/token}; rotate the token: ${rotate}`
  }
  return `keep it in the secret store or an environment variable; ${rotate}`
}
