/**
 * A corpus of bad inventories: what people and accidents put in an inventory folder. Each case
 * writes its files into a fresh folder and says what pgi must answer. Run through the loader
 * (test/unit/inventory/bad-corpus.test.ts, fast, from the sources) and through the built CLI
 * (test/e2e/cli/bad-inventory.test.ts, the esbuild bundle as users run it).
 */
import {execFileSync} from 'node:child_process'
import {cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'

const root = resolve(import.meta.dirname, '../..')
export const EXAMPLE = join(root, 'inventory', 'example')

/** A token secret, as Proxmox VE makes them: it must never appear in pgi's output. */
export const SECRET_UUID = '5f0c1d7e-8a3b-4c2d-9e6f-0a1b2c3d4e5f'
/** An age secret key (a made-up one, of the right form). */
export const AGE_SECRET = 'AGE-SECRET-KEY-1QQQSZQ2XR5D2M4LP3NTKH0F8W6Y2V9C7J5E3A1U0S8G6R4T2Q0P9N7M5L3K1'

export interface Expectation {
  /** 3 when the inventory is invalid; 0 when acceptable (with a warning, see `rules`). */
  exit: 0 | 3
  /** Rules that must be among the problems (errors when exit is 3, warnings when 0). */
  rules: string[]
  /** Where the first problem of `rules[0]` must be: file (relative to the case's folder), line and column. */
  at?: {file: string; line: number; column: number}
  /** Text that must never appear in any output (a secret, or the content of a file that is not read). */
  secret?: string
}

export interface BadInventory extends Expectation {
  name: string
  /** Writes the case into `dir`; returns the -i path, relative to `dir`. */
  make(dir: string): string
  /** Needs a process without root's permission override (EACCES): files or folders mode 000. */
  unreadable?: boolean
}

/** Copies the example inventory to dir/inv; returns 'inv'. */
export function example(dir: string): string {
  cpSync(EXAMPLE, join(dir, 'inv'), {recursive: true})
  return 'inv'
}

/** Replaces `from` (which must be there) by `to` in dir/inv/file. */
function edit(dir: string, file: string, from: string | RegExp, to: string): void {
  const p = join(dir, 'inv', file)
  const text = readFileSync(p, 'utf8')
  const next = text.replace(from, to)
  if (next === text) throw new Error(`corpus: ${file} does not contain ${String(from)}`)
  writeFileSync(p, next)
}

function write(dir: string, file: string, data: string | Buffer): void {
  mkdirSync(dirname(join(dir, file)), {recursive: true})
  writeFileSync(join(dir, file), data)
}

/** 1-based line and column of `needle` in dir/file (the n-th occurrence). */
export function locateIn(dir: string, file: string, needle: string, nth = 1): {file: string; line: number; column: number} {
  const text = readFileSync(join(dir, file), 'utf8').replace(/^\uFEFF/, '')
  let i = -1
  for (let k = 0; k < nth; k++) {
    i = text.indexOf(needle, i + 1)
    if (i === -1) throw new Error(`corpus: ${file} does not contain ${JSON.stringify(needle)}`)
  }
  const before = text.slice(0, i).split('\n')
  return {file, line: before.length, column: before.at(-1)!.length + 1}
}

/** An inventory with one more file (the example plus `file` holding `data`). */
function withFile(file: string, data: string | Buffer): (dir: string) => string {
  return (dir) => {
    example(dir)
    write(dir, join('inv', file), data)
    return 'inv'
  }
}

/** Deterministic bytes (xorshift): "binary data" that is the same at every run. */
function noise(n: number, seed = 42): Buffer {
  const b = Buffer.alloc(n)
  let x = seed
  for (let i = 0; i < n; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    b[i] = x & 0xff
  }
  return b
}

/** `n` bytes of YAML comment lines (well-formed, and pointless). */
function commentBytes(n: number): string {
  const line = '# ' + 'x'.repeat(76) + '\n'
  return line.repeat(Math.ceil(n / line.length))
}

const billionLaughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
for (const [k, prev] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd'], ['f', 'e'], ['g', 'f'], ['h', 'g'], ['i', 'h']] as const) {
  billionLaughs.push(`${k}: &${k} [${Array(9).fill(`*${prev}`).join(',')}]`)
}

const H = 'hypervisors.yaml'
const E = 'establishments.yaml'
const R = 'region.yaml'

export const CORPUS: BadInventory[] = [
  // ---- YAML itself ------------------------------------------------------------------------------
  {
    name: 'unclosed flow sequence',
    make: (d) => (example(d), edit(d, R, 'rings: [canary, pilot, general]', 'rings: [canary, pilot, general'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
  },
  {
    name: 'duplicate key in a mapping',
    make: (d) => (example(d), edit(d, H, '    bridge: vmbr0\n', '    bridge: vmbr0\n    bridge: vmbr2\n'), 'inv'),
    exit: 3,
    rules: ['duplicate-key'],
    at: {file: `inv/${H}`, line: 14, column: 5},
  },
  {
    name: 'tab used for indentation',
    make: (d) => (example(d), edit(d, R, '  academie: Aix-Marseille', '\tacademie: Aix-Marseille'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
  },
  {
    name: 'unknown tag !!js/function',
    make: (d) => (example(d), edit(d, R, /^region: .*$/m, 'region: !!js/function "function () { return process.exit(9) }"'), 'inv'),
    exit: 3,
    rules: ['yaml-tag'],
    at: {file: `inv/${R}`, line: 4, column: 9},
  },
  {
    name: 'local tag on a value',
    make: (d) => (example(d), edit(d, E, 'vmid: 1001', 'vmid: !int 1001'), 'inv'),
    exit: 3,
    rules: ['yaml-tag'],
  },
  {
    name: 'multi-document file',
    make: (d) => (example(d), edit(d, R, /$/, '---\nregion: another\n'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
  },
  {
    name: 'deeply nested flow collections (200,000 brackets)',
    make: withFile('deep.yaml', `region: ${'['.repeat(200_000)}${']'.repeat(200_000)}\n`),
    exit: 3,
    rules: ['yaml-limit'],
    at: {file: 'inv/deep.yaml', line: 1, column: 9 + 64},
  },
  {
    name: 'deeply nested block mappings (1,500 levels)',
    make: withFile('deep.yaml', Array.from({length: 1500}, (_, i) => `${' '.repeat(i)}a:\n`).join('')),
    exit: 3,
    rules: ['yaml-limit'],
  },
  {
    name: 'alias bomb ("billion laughs")',
    make: withFile('bomb.yaml', billionLaughs.join('\n') + '\n'),
    exit: 3,
    rules: ['yaml-limit'],
  },
  {
    name: 'unterminated quoted string',
    make: (d) => (example(d), edit(d, R, /^region: .*$/m, 'region: "Région Démo'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
  },
  {
    name: 'key without a colon',
    make: (d) => (example(d), edit(d, H, '    bridge: vmbr0\n', '    bridge vmbr0\n'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
  },
  {name: 'empty file beside the others (acceptable)', make: withFile('empty.yaml', ''), exit: 0, rules: ['empty-file']},
  {name: 'file of comments only (acceptable)', make: withFile('notes.yaml', '# to do: add the lycées of the Var\n'), exit: 0, rules: ['empty-file']},
  {name: 'a list at the top level', make: withFile('list.yaml', '- 0130040Y\n- 0840004Y\n'), exit: 3, rules: ['wrong-type'], at: {file: 'inv/list.yaml', line: 1, column: 1}},
  {name: 'a plain text file named .yaml', make: withFile('readme.yaml', 'This folder holds the inventory of the Région.\n'), exit: 3, rules: ['wrong-type']},
  {
    name: 'a mapping where a list is expected',
    make: (d) => (example(d), edit(d, R, 'rings: [canary, pilot, general]', 'rings: {canary: 1}'), 'inv'),
    exit: 3,
    rules: ['wrong-type'],
  },

  // ---- encodings and bytes ---------------------------------------------------------------------
  {
    name: 'Latin-1 file',
    make: (d) => {
      example(d)
      write(d, `inv/${E}`, Buffer.from(readFileSync(join(EXAMPLE, E), 'utf8'), 'latin1'))
      return 'inv'
    },
    exit: 3,
    rules: ['not-utf8'],
    // "    name: Lycée Georges Colomb": é is the 14th character of line 4
    at: {file: `inv/${E}`, line: 4, column: 14},
  },
  {
    name: 'Windows-1252 curly apostrophe',
    make: (d) => {
      example(d)
      const [a, b] = readFileSync(join(EXAMPLE, R), 'utf8').replace(/^region: .*$/m, 'region: L@Académie').split('@')
      write(d, `inv/${R}`, Buffer.concat([Buffer.from(a!), Buffer.from([0x92]), Buffer.from(b!)]))
      return 'inv'
    },
    exit: 3,
    rules: ['not-utf8'],
    at: {file: `inv/${R}`, line: 4, column: 10},
  },
  {
    name: 'UTF-16 with a byte-order mark',
    make: (d) => {
      example(d)
      write(d, `inv/${R}`, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(readFileSync(join(EXAMPLE, R), 'utf8'), 'utf16le')]))
      return 'inv'
    },
    exit: 3,
    rules: ['not-utf8'],
    at: {file: `inv/${R}`, line: 1, column: 1},
  },
  {
    name: 'overlong UTF-8 sequence',
    make: (d) => {
      example(d)
      write(d, `inv/${R}`, Buffer.concat([Buffer.from('region: a'), Buffer.from([0xc0, 0xaf]), Buffer.from('b\n')]))
      return 'inv'
    },
    exit: 3,
    rules: ['not-utf8'],
    at: {file: `inv/${R}`, line: 1, column: 10},
  },
  {
    name: 'UTF-8 byte-order mark (acceptable)',
    make: (d) => {
      example(d)
      write(d, `inv/${R}`, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), readFileSync(join(EXAMPLE, R))]))
      return 'inv'
    },
    exit: 0,
    rules: [],
  },
  {
    name: 'UTF-8 byte-order mark, then an error on line 1 (columns do not count the mark)',
    make: withFile('bom.yaml', '\uFEFFregoin: Sud\n'),
    exit: 3,
    rules: ['unknown-key'],
    at: {file: 'inv/bom.yaml', line: 1, column: 1},
  },
  {
    name: 'CRLF line ends (acceptable)',
    make: (d) => {
      example(d)
      for (const f of [H, E, R]) write(d, `inv/${f}`, readFileSync(join(EXAMPLE, f), 'utf8').replace(/\n/g, '\r\n'))
      return 'inv'
    },
    exit: 0,
    rules: [],
  },
  {
    name: 'CRLF line ends and a duplicate vmid (lines still right)',
    make: (d) => {
      example(d)
      write(d, `inv/${E}`, readFileSync(join(EXAMPLE, E), 'utf8').replace('vmid: 1002', 'vmid: 1001').replace(/\n/g, '\r\n'))
      return 'inv'
    },
    exit: 3,
    rules: ['duplicate-vmid'],
    at: {file: `inv/${E}`, line: 20, column: 11},
  },
  {name: 'binary data', make: withFile('data.yaml', noise(4096)), exit: 3, rules: ['not-utf8']},
  {
    name: 'NUL byte in a value',
    make: (d) => (example(d), edit(d, R, /^region: .*$/m, 'region: Sud\u0000Est'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
    at: {file: `inv/${R}`, line: 4, column: 12},
  },
  {
    name: 'terminal escape sequence in a name',
    make: (d) => (example(d), edit(d, E, 'name: Lycée Georges Colomb', 'name: Lycée \u001b[2J\u001b[31mGeorges Colomb'), 'inv'),
    exit: 3,
    rules: ['yaml-syntax'],
    at: {file: `inv/${E}`, line: 4, column: 17},
  },

  // ---- files that are not (readable, reasonable) regular files ------------------------------------
  {
    name: 'a FIFO named *.yaml in the folder',
    make: (d) => (example(d), execFileSync('mkfifo', [join(d, 'inv', 'pipe.yaml')]), 'inv'),
    exit: 3,
    rules: ['not-a-file'],
    at: {file: 'inv/pipe.yaml', line: 1, column: 1},
  },
  {
    name: 'a FIFO given as the inventory',
    make: (d) => (execFileSync('mkfifo', [join(d, 'inventory.yaml')]), 'inventory.yaml'),
    exit: 3,
    rules: ['not-a-file'],
    at: {file: 'inventory.yaml', line: 1, column: 1},
  },
  {
    name: 'an inventory file linked to /dev/zero',
    make: (d) => (example(d), symlinkSync('/dev/zero', join(d, 'inv', 'zero.yaml')), 'inv'),
    exit: 3,
    rules: ['not-a-file'],
    at: {file: 'inv/zero.yaml', line: 1, column: 1},
  },
  {
    name: 'a link to /dev/urandom given as the inventory',
    make: (d) => (symlinkSync('/dev/urandom', join(d, 'random.yaml')), 'random.yaml'),
    exit: 3,
    rules: ['not-a-file'],
  },
  {
    name: 'a symbolic link loop',
    make: (d) => (example(d), symlinkSync('loop.yaml', join(d, 'inv', 'loop.yaml')), 'inv'),
    exit: 3,
    rules: ['file-unreadable'],
    at: {file: 'inv/loop.yaml', line: 1, column: 1},
  },
  {
    name: 'a broken symbolic link',
    make: (d) => (example(d), symlinkSync('moved-away.yaml', join(d, 'inv', 'old.yaml')), 'inv'),
    exit: 3,
    rules: ['file-unreadable'],
  },
  {
    name: 'a file over the size limit',
    make: withFile('huge.yaml', commentBytes(2 * 1024 * 1024 + 100)),
    exit: 3,
    rules: ['file-too-large'],
    at: {file: 'inv/huge.yaml', line: 1, column: 1},
  },
  {
    name: 'files that add up over the inventory limit',
    make: (d) => {
      example(d)
      for (const f of ['x1.yaml', 'x2.yaml', 'x3.yaml']) write(d, `inv/${f}`, commentBytes(1.5 * 1024 * 1024))
      return 'inv'
    },
    exit: 3,
    rules: ['file-too-large'],
    at: {file: 'inv/x3.yaml', line: 1, column: 1},
  },
  {
    name: 'a file pgi may not read',
    make: (d) => (example(d), execFileSync('chmod', ['000', join(d, 'inv', R)]), 'inv'),
    unreadable: true,
    exit: 3,
    rules: ['file-unreadable'],
    at: {file: `inv/${R}`, line: 1, column: 1},
  },
  {
    name: 'a folder pgi may not read',
    make: (d) => {
      example(d)
      write(d, 'inv/more/extra.yaml', 'recipients: []\n')
      execFileSync('chmod', ['000', join(d, 'inv', 'more')])
      return 'inv'
    },
    unreadable: true,
    exit: 3,
    rules: ['file-unreadable'],
    at: {file: 'inv/more', line: 1, column: 1},
  },
  {
    name: 'a folder named *.yaml (acceptable: walked, not read)',
    make: (d) => (example(d), mkdirSync(join(d, 'inv', 'old.yaml')), 'inv'),
    exit: 0,
    rules: [],
  },
  {
    name: 'tls.ca_file is /dev/zero',
    make: (d) => (example(d), edit(d, H, 'ca_file: ca/avignon-ca.pem', 'ca_file: /dev/zero'), 'inv'),
    exit: 3,
    rules: ['tls-ca-file'],
    at: {file: `inv/${H}`, line: 19, column: 16},
  },
  {
    name: 'tls.ca_file is a FIFO',
    make: (d) => (example(d), execFileSync('mkfifo', [join(d, 'inv', 'ca', 'fifo.pem')]), edit(d, H, 'ca/avignon-ca.pem', 'ca/fifo.pem'), 'inv'),
    exit: 3,
    rules: ['tls-ca-file'],
  },
  {
    name: 'tls.ca_file over the size limit',
    make: (d) => (example(d), write(d, 'inv/ca/big.pem', '-----BEGIN CERTIFICATE-----\n' + commentBytes(1024 * 1024 + 10)), edit(d, H, 'ca/avignon-ca.pem', 'ca/big.pem'), 'inv'),
    exit: 3,
    rules: ['tls-ca-file'],
  },
  {
    name: 'tls.ca_file is a folder',
    make: (d) => (example(d), edit(d, H, 'ca/avignon-ca.pem', 'ca'), 'inv'),
    exit: 3,
    rules: ['tls-ca-file'],
  },
  {
    name: 'tls.ca_file is a symbolic link loop',
    make: (d) => (example(d), symlinkSync('loop.pem', join(d, 'inv', 'ca', 'loop.pem')), edit(d, H, 'ca/avignon-ca.pem', 'ca/loop.pem'), 'inv'),
    exit: 3,
    rules: ['tls-ca-file'],
  },
  {
    name: 'tls.ca_file holds no certificate',
    make: (d) => (example(d), write(d, 'inv/ca/avignon-ca.pem', noise(300)), 'inv'),
    exit: 3,
    rules: ['tls-ca-file'],
  },

  // ---- secrets in the wrong place ----------------------------------------------------------------
  {
    name: 'token.id written with its secret (USER@REALM!ID=SECRET)',
    make: (d) => (example(d), edit(d, H, 'id: pgi@pve!deploy\n      secret: {env: PGI_TOKEN_HV_MARSEILLE}', `id: pgi@pve!deploy=${SECRET_UUID}\n      secret: {env: PGI_TOKEN_HV_MARSEILLE}`), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    at: {file: `inv/${H}`, line: 10, column: 11},
    secret: SECRET_UUID,
  },
  {
    name: 'token.id is the secret alone (a UUID)',
    make: (d) => (example(d), edit(d, H, 'id: pgi@pve!deploy\n      secret: {env: PGI_TOKEN_HV_MARSEILLE}', `id: ${SECRET_UUID}\n      secret: {env: PGI_TOKEN_HV_MARSEILLE}`), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    at: {file: `inv/${H}`, line: 10, column: 11},
    secret: SECRET_UUID,
  },
  {
    name: 'the whole token as one string',
    make: (d) => (example(d), edit(d, H, /    token:\n      id: pgi@pve!deploy\n      secret: \{env: PGI_TOKEN_HV_MARSEILLE\}\n/, `    token: "PVEAPIToken=pgi@pve!deploy=${SECRET_UUID}"\n`), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    at: {file: `inv/${H}`, line: 9, column: 12},
    secret: SECRET_UUID,
  },
  {
    name: 'token.secret written in the YAML',
    make: (d) => (example(d), edit(d, H, 'secret: {env: PGI_TOKEN_HV_MARSEILLE}', `secret: ${SECRET_UUID}`), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    at: {file: `inv/${H}`, line: 11, column: 15},
    secret: SECRET_UUID,
  },
  {
    name: 'the secret where the variable name goes ({env: SECRET})',
    make: (d) => (example(d), edit(d, H, 'secret: {env: PGI_TOKEN_HV_MARSEILLE}', `secret: {env: ${SECRET_UUID}}`), 'inv'),
    exit: 3,
    rules: ['secret-ref'],
    secret: SECRET_UUID,
  },
  {
    name: 'a password in the API URL',
    make: (d) => (example(d), edit(d, H, 'url: https://192.0.2.10:8006', 'url: https://root:Tr0ub4dor-3@192.0.2.10:8006'), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    secret: 'Tr0ub4dor',
  },
  {
    name: 'a password in a URL that is not valid either',
    make: (d) => (example(d), edit(d, H, 'url: https://192.0.2.10:8006', 'url: "https://root:Tr0ub4dor 3@192.0.2.10:8006"'), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    secret: 'Tr0ub4dor',
  },
  {
    name: "an AMI's age secret key instead of the public one",
    make: (d) => (example(d), edit(d, E, 'age_recipient: age1ppm2jlw8edhgt99e7furp5wjdd4gyrlv5ndarvv4npp3g67wzceqdhdjyx', `age_recipient: ${AGE_SECRET}`), 'inv'),
    exit: 3,
    rules: ['secret-literal'],
    at: {file: `inv/${E}`, line: 14, column: 22},
    secret: AGE_SECRET.slice(20),
  },
  {
    name: 'an SSH private key where the public key goes',
    make: (d) =>
      (example(d),
      edit(d, E, '      age_recipient: age15clj4ufv8lshfq6zcm3xawc8kexgsl5rlp22u6lgercrd0s7ppqqctympt\n', `      age_recipient: age15clj4ufv8lshfq6zcm3xawc8kexgsl5rlp22u6lgercrd0s7ppqqctympt\n      ssh_key: |\n        -----BEGIN OPENSSH PRIVATE KEY-----\n        b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n        -----END OPENSSH PRIVATE KEY-----\n`),
      'inv'),
    exit: 3,
    rules: ['secret-literal'],
    secret: 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ',
  },
  {
    name: 'a password under an unknown key',
    make: (d) => (example(d), edit(d, H, 'ssh: {host: 198.51.100.20, port: 22, user: pgi}', 'ssh: {host: 198.51.100.20, port: 22, user: pgi, password: Tr0ub4dor-3}'), 'inv'),
    exit: 3,
    rules: ['unknown-key'],
    secret: 'Tr0ub4dor',
  },

  // ---- the format and the rules -------------------------------------------------------------------
  {name: 'wrong type', make: (d) => (example(d), edit(d, R, 'cores: 2', 'cores: deux'), 'inv'), exit: 3, rules: ['wrong-type']},
  {name: 'unknown key (misspelt)', make: (d) => (example(d), edit(d, E, 'ring: canary', 'rign: canary'), 'inv'), exit: 3, rules: ['unknown-key'], at: {file: `inv/${E}`, line: 8, column: 5}},
  {name: 'UAI with a wrong check letter', make: (d) => (example(d), edit(d, E, 'uai: 0130040Y', 'uai: 0130040Z'), 'inv'), exit: 3, rules: ['uai-check-letter']},
  {name: 'UAI without its letter (read as a number)', make: (d) => (example(d), edit(d, E, 'uai: 0130040Y', 'uai: 0130040'), 'inv'), exit: 3, rules: ['uai-format']},
  {name: 'duplicate vmid on a hypervisor', make: (d) => (example(d), edit(d, E, 'vmid: 1002', 'vmid: 1001'), 'inv'), exit: 3, rules: ['duplicate-vmid']},
  {name: 'duplicate UAI', make: (d) => (example(d), edit(d, E, 'uai: 0130041Z', 'uai: 0130040Y'), 'inv'), exit: 3, rules: ['duplicate-uai']},
  {name: 'address that is not a CIDR', make: (d) => (example(d), edit(d, E, '192.0.2.101/24', '192.0.2.301/24'), 'inv'), exit: 3, rules: ['bad-cidr']},
  {name: 'gateway outside the subnet', make: (d) => (example(d), edit(d, E, 'gateway: 198.51.100.1, dns', 'gateway: 203.0.113.1, dns'), 'inv'), exit: 3, rules: ['gateway-outside-subnet']},
  {name: 'unknown hypervisor', make: (d) => (example(d), edit(d, E, 'hypervisor: hv-avignon', 'hypervisor: hv-avignom'), 'inv'), exit: 3, rules: ['unknown-hypervisor']},
  {name: 'SHA-1 fingerprint', make: (d) => (example(d), edit(d, H, /fingerprint: ".*"/, 'fingerprint: "3A:9F:0C:51:7B:22:E4:18:C6:0D:95:AB:41:7E:F2:63:88:1C:D4:5A"'), 'inv'), exit: 3, rules: ['tls-fingerprint']},
  {name: 'time of day out of range', make: (d) => (example(d), edit(d, R, 'end: "14:00"', 'end: "25:00"'), 'inv'), exit: 3, rules: ['maintenance-window']},
  {
    name: 'a database name PostgreSQL would need quoted',
    make: (d) => (example(d), edit(d, E, 'name: bts_cg_2027', 'name: "BTS-CG 2027"'), 'inv'),
    exit: 3,
    rules: ['database-name'],
    at: {file: `inv/${E}`, line: 62, column: 16},
  },
  {
    name: 'a database declared twice, one reserved (defaults)',
    make: (d) => (example(d), edit(d, R, '    - name: pgi\n', '    - name: pgi\n    - name: pgi\n    - name: pgi_tmp_1\n'), 'inv'),
    exit: 3,
    rules: ['duplicate-database', 'database-name'],
    at: {file: `inv/${R}`, line: 38, column: 13},
  },
  {name: 'vmid out of range', make: (d) => (example(d), edit(d, E, 'vmid: 1003', 'vmid: -1003'), 'inv'), exit: 3, rules: ['invalid-value']},
  {name: 'a number too large for YAML (1e400)', make: (d) => (example(d), edit(d, E, 'vmid: 1003', 'vmid: 1e400'), 'inv'), exit: 3, rules: ['wrong-type']},
  {
    name: 'a 2,000-character key (the message quotes its start only)',
    make: withFile('long.yaml', `${'k'.repeat(2000)}: 1\n`),
    exit: 3,
    rules: ['unknown-key'],
    secret: 'k'.repeat(200),
  },
  {name: 'an establishment that is not a mapping', make: (d) => (example(d), edit(d, E, /^establishments:\n/m, 'establishments:\n  - 0130040Y\n'), 'inv'), exit: 3, rules: ['wrong-type']},
]
