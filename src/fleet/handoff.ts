import {mkdir, readFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {armor, Decrypter, Encrypter} from 'age-encryption'

import {readRegularFile} from '../bounded-read.js'
import {ErrorCode, UserError} from '../errors.js'
import type {Io} from '../io.js'
import {packageRoot} from '../paths.js'
import {listDatabases, type PgiDbDatabase} from './pgidb.js'
import type {PveApi} from '../proxmox/types.js'
import type {Establishment} from '../inventory/types.js'
import {Secret} from '../secret.js'
import {writeFileAtomic} from '../secrets/atomic.js'
import {readIdentityFile} from '../secrets/identity.js'
import type {SecretStore} from '../secrets/store.js'
import {
  hostKeysKey,
  refuseDuringRotation,
  tlsFingerprintKey,
  readEstablishmentSecrets,
  trytonSeriesKey,
  SQL_ADMIN_LOGIN,
  TRYTON_ADMIN_LOGIN,
  type EstablishmentSecrets,
} from './secrets.js'

/**
 * The handoff: one file per establishment, `<UAI>.handoff.age`, age-encrypted to that
 * establishment's AMI public key alone (inventory `ami.age_recipient`). Decrypted, it is a French
 * letter the AMI can read as is (what each access is for, how to change the passwords) followed
 * by the same data as a JSON block between markers, which `pgi credentials open` reads back.
 * The real `age -d -i KEY FILE` decrypts it too.
 */

export const HANDOFF_FORMAT = 'pgi-handoff/1'
export const HANDOFF_SUFFIX = '.handoff.age'
const JSON_BEGIN = '-----BEGIN PGI HANDOFF DATA-----'
const JSON_END = '-----END PGI HANDOFF DATA-----'

/** Default ports of the guest contract (/etc/pgi/image.json). */
export const GUEST_PORTS = {ssh: 22, web: 80, jsonrpc: 8000, postgresql: 5432} as const
/**
 * The Tryton series of a VM whose series pgi never read (deployed before pgi recorded it): those
 * run the 1.x image line, Tryton 6.0.
 */
export const DEFAULT_TRYTON_SERIES = '6.0'
/** The database every establishment gets unless its inventory says otherwise (inventory `databases:`), which the desktop profile names. */
export const DEFAULT_TRYTON_DATABASE = 'pgi'

/** A Tryton database the handoff names: one the VM really has when the handoff is written. */
export interface HandoffDatabase {
  name: string
  /** Its company's name, when it has exactly one. */
  company: string | null
}

/**
 * The databases a handoff lists, from `pgi-db list` run in the VM (src/fleet/pgidb.ts): its Tryton
 * databases, class databases left out (the teachers hand those to their students themselves).
 */
export function handoffDatabases(list: readonly PgiDbDatabase[]): HandoffDatabase[] {
  return list.filter((d) => d.tryton && !(d.kind ?? '').startsWith('class')).map((d) => ({name: d.name, company: d.company ?? null}))
}

/**
 * The databases the VM of `est` has now, for its handoff (`pgi-db list` over the guest agent);
 * undefined, with a warning, when they cannot be read (the VM stopped, an image without pgi-db):
 * the handoff then names the default database without claiming it exists.
 */
export async function readHandoffDatabases(api: PveApi, est: Establishment, io?: Io): Promise<HandoffDatabase[] | undefined> {
  try {
    // a GET first: a hypervisor that does not answer is found out within one read deadline (its
    // breaker opens), instead of the guest command's retried POSTs; a stopped VM has nothing to say
    const st = await api.vmStatus(est.node, est.vmid)
    if (st?.status !== 'running') {
      io?.warn(`${est.uai}: VM ${est.vmid} is ${st?.status ?? 'missing'}: the handoff will not list its databases`)
      return undefined
    }
    return handoffDatabases(await listDatabases({api, node: est.node, vmid: est.vmid, uai: est.uai}))
  } catch (err) {
    io?.warn(`${est.uai}: the VM's databases could not be read (the handoff will not list them): ${(err as Error).message}`)
    return undefined
  }
}

/**
 * How the AMI reaches the VM, when it is not simply the inventory address on the standard ports
 * (a lab forwarding ports on loopback, a NAT in front of the establishment's network).
 */
export interface HandoffConnection {
  /** Host name or address to connect to (default: the inventory address, without its prefix length). */
  host?: string
  sshPort?: number
  postgresqlPort?: number
  /** Tryton JSON-RPC port for the desktop client (default 8000). */
  jsonrpcPort?: number
  /** Web port (default 80); ignored when webUrl is given. */
  webPort?: number
  webUrl?: string
  /** Tryton database name (default "pgi"). */
  database?: string
  /** Why the AMI reaches the VM this way (e.g. a simulated lab), shown in the letter beside the address. */
  note?: string
}

/** Where pgi-tls records the VM's certificate (images/pgi-tryton/files/usr/local/sbin/pgi-tls). */
export const GUEST_TLS_RECORD = '/run/pgi/tls.json'

/** A certificate's SHA-256 fingerprint as openssl prints it: 32 uppercase hex pairs joined by colons. */
export const TLS_FINGERPRINT_RE = /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/

/**
 * The fingerprint of the certificate the VM serves over HTTPS, from pgi-tls's record (a file read
 * through the guest agent, a GET); undefined when the VM has none (an image from before HTTPS).
 * The certificate lives on the data disk, so the fingerprint survives a new OS disk.
 */
export async function fetchTlsFingerprint(api: PveApi, node: string, vmid: number): Promise<string | undefined> {
  let text: string
  try {
    text = await api.agentFileRead(node, vmid, GUEST_TLS_RECORD)
  } catch (err) {
    // no such file: an image without pgi-tls; anything else (the agent not answering) is the caller's to report
    if (/No such file|not found|does not exist|ENOENT/i.test((err as Error).message)) return undefined
    throw err
  }
  let fp: unknown
  try {
    fp = (JSON.parse(text) as {sha256?: unknown}).sha256
  } catch {
    throw new Error(`${GUEST_TLS_RECORD} is not JSON`)
  }
  if (typeof fp !== 'string' || !TLS_FINGERPRINT_RE.test(fp.trim().toUpperCase())) throw new Error(`${GUEST_TLS_RECORD} holds no SHA-256 fingerprint`)
  return fp.trim().toUpperCase()
}

/** Records the fingerprint of the VM's HTTPS certificate in the store, for the next handoffs. */
export async function recordTlsFingerprint(store: SecretStore, uai: string, fingerprint: string): Promise<void> {
  if (!TLS_FINGERPRINT_RE.test(fingerprint)) throw new Error(`not a SHA-256 certificate fingerprint: ${JSON.stringify(fingerprint)}`)
  await store.put(tlsFingerprintKey(uai), new Secret(fingerprint))
}

export async function readTlsFingerprint(store: SecretStore, uai: string): Promise<string | undefined> {
  const v = (await store.tryGet(tlsFingerprintKey(uai)))?.reveal().trim()
  return v && TLS_FINGERPRINT_RE.test(v) ? v : undefined
}

/**
 * Reads the VM's certificate fingerprint and records it when it changed (a newer record means a
 * new handoff); best effort, as the SSH host keys: a warning when it cannot be read.
 */
export async function refreshTlsFingerprint(api: PveApi, store: SecretStore, est: Establishment, io?: Io): Promise<string | undefined> {
  try {
    const fp = await fetchTlsFingerprint(api, est.node, est.vmid)
    if (fp && fp !== (await readTlsFingerprint(store, est.uai))) await recordTlsFingerprint(store, est.uai, fp)
    return fp
  } catch (err) {
    io?.warn(`${est.uai}: could not read the VM's HTTPS certificate (the handoff will not name its fingerprint): ${(err as Error).message}`)
    return undefined
  }
}

/** Everything the AMI receives. Passwords are Secrets; they are revealed only into the encrypted file. */
export interface HandoffDocument {
  format: typeof HANDOFF_FORMAT
  issuedAt: string
  issuedBy: string
  establishment: {uai: string; name: string; academie: string}
  ami: {name: string}
  vm: {name: string; address: string; note?: string}
  ssh: {host: string; port: number; login: string; password: Secret; hostKeyFingerprints: string[]}
  postgresql: {host: string; port: number; login: string; password: Secret}
  trytonAdmin: {login: string; password: Secret}
  webClient: {url: string}
  desktopClient: {client: string; host: string; port: number; database: string; username: string}
  /** The Tryton databases the VM had when the handoff was written; undefined when they could not be read. */
  databases?: HandoffDatabase[]
  /**
   * The teachers' console (docs/console.md) and the certificate the VM serves over HTTPS; undefined
   * for a VM whose image has no HTTPS (no pgi-tls record was read).
   */
  console?: {url: string; tlsSha256: string}
}

/** The JSON form of a handoff (snake_case, passwords in clear): what the encrypted file holds. */
export interface HandoffJson {
  format: string
  issued_at: string
  issued_by: string
  establishment: {uai: string; name: string; academie: string}
  ami: {name: string}
  vm: {name: string; address: string; note?: string}
  ssh: {host: string; port: number; login: string; password: string; host_key_fingerprints: string[]}
  postgresql: {host: string; port: number; login: string; password: string}
  tryton_admin: {login: string; password: string}
  web_client: {url: string}
  desktop_client: {client: string; host: string; port: number; database: string; username: string}
  /** Absent in handoffs written before pgi listed databases, or when they could not be read. */
  databases?: HandoffDatabase[]
  /** Absent in handoffs of VMs without HTTPS (and in those written before the console). */
  console?: {url: string; tls_sha256: string}
}

export interface BuildHandoffOptions {
  connection?: HandoffConnection
  /** SSH host key fingerprints ("SHA256:…", optionally with the key type), when known. */
  sshHostKeyFingerprints?: string[]
  now?: Date
  /** e.g. "pgi 0.1.0" */
  issuedBy?: string
  /** The server's Tryton series ("7.0"): the desktop client must be the same (default 6.0). */
  trytonSeries?: string
  /** The Tryton databases the VM has (read from it at handoff time). */
  databases?: HandoffDatabase[]
  /**
   * The SHA-256 fingerprint of the VM's HTTPS certificate (its pgi-tls record): when known, the
   * web client's address is https:// and the handoff names the teachers' console.
   */
  tlsSha256?: string
}

/** The VM name of an establishment (also its hostname): `pgi-0130040y`. */
export function handoffVmName(uai: string): string {
  return `pgi-${uai.toLowerCase().replace(/[^a-z0-9-]/g, '-')}`
}

export function buildHandoff(est: Establishment, secrets: EstablishmentSecrets, opts: BuildHandoffOptions = {}): HandoffDocument {
  const c = opts.connection ?? {}
  const address = est.network.address.split('/')[0]
  const host = c.host ?? address
  // a VM with a certificate serves browsers over HTTPS only (port 80 redirects there); an older
  // image serves plain HTTP
  const tls = opts.tlsSha256
  const webUrl = c.webUrl ?? (tls ? `https://${urlHost(host)}/` : `http://${urlHost(host)}${c.webPort && c.webPort !== GUEST_PORTS.web ? `:${c.webPort}` : ''}/`)
  // the desktop profile's database: "pgi" when the server has it (or when the list is unknown), else its first database
  const dbs = opts.databases
  const database = c.database ?? (dbs && dbs.length > 0 && !dbs.some((d) => d.name === DEFAULT_TRYTON_DATABASE) ? dbs[0]!.name : DEFAULT_TRYTON_DATABASE)
  return {
    format: HANDOFF_FORMAT,
    issuedAt: (opts.now ?? new Date()).toISOString(),
    issuedBy: opts.issuedBy ?? 'pgi',
    establishment: {uai: est.uai, name: est.name, academie: est.academie},
    ami: {name: est.ami.name},
    vm: {name: handoffVmName(est.uai), address, ...(c.note ? {note: c.note} : {})},
    ssh: {host, port: c.sshPort ?? GUEST_PORTS.ssh, login: est.ami.login, password: secrets.amiPassword, hostKeyFingerprints: opts.sshHostKeyFingerprints ?? []},
    postgresql: {host, port: c.postgresqlPort ?? GUEST_PORTS.postgresql, login: SQL_ADMIN_LOGIN, password: secrets.sqlAdmin},
    trytonAdmin: {login: TRYTON_ADMIN_LOGIN, password: secrets.trytonAdmin},
    webClient: {url: webUrl},
    desktopClient: {client: `Tryton ${opts.trytonSeries ?? DEFAULT_TRYTON_SERIES}`, host, port: c.jsonrpcPort ?? GUEST_PORTS.jsonrpc, database, username: TRYTON_ADMIN_LOGIN},
    ...(dbs ? {databases: dbs.map((d) => ({...d}))} : {}),
    ...(tls ? {console: {url: `${webUrl.replace(/\/+$/, '')}/console/`, tlsSha256: tls}} : {}),
  }
}

function urlHost(h: string): string {
  return h.includes(':') && !h.startsWith('[') ? `[${h}]` : h
}

/** The wire form, with passwords revealed: only for the encrypted file and for `open`'s output to its owner. */
export function handoffToJson(doc: HandoffDocument): HandoffJson {
  return {
    format: doc.format,
    issued_at: doc.issuedAt,
    issued_by: doc.issuedBy,
    establishment: {...doc.establishment},
    ami: {...doc.ami},
    vm: {...doc.vm},
    ssh: {host: doc.ssh.host, port: doc.ssh.port, login: doc.ssh.login, password: doc.ssh.password.reveal(), host_key_fingerprints: [...doc.ssh.hostKeyFingerprints]},
    postgresql: {host: doc.postgresql.host, port: doc.postgresql.port, login: doc.postgresql.login, password: doc.postgresql.password.reveal()},
    tryton_admin: {login: doc.trytonAdmin.login, password: doc.trytonAdmin.password.reveal()},
    web_client: {url: doc.webClient.url},
    desktop_client: {...doc.desktopClient},
    ...(doc.databases ? {databases: doc.databases.map((d) => ({...d}))} : {}),
    ...(doc.console ? {console: {url: doc.console.url, tls_sha256: doc.console.tlsSha256}} : {}),
  }
}

function hostPort(host: string, port: number): string {
  return `${urlHost(host)}:${port}`
}

/** The plaintext of the handoff: the French letter, then the data block. */
export function renderHandoff(doc: HandoffDocument): string {
  const j = handoffToJson(doc)
  const sshCmd = `ssh ${j.ssh.port === 22 ? '' : `-p ${j.ssh.port} `}${j.ssh.login}@${j.ssh.host}`
  const fps = j.ssh.host_key_fingerprints
  // "Tryton 7.0" → "7.0" (the series names the client's version and its configuration folder)
  const series = /(\d+\.\d+)/.exec(j.desktop_client.client)?.[1] ?? DEFAULT_TRYTON_SERIES
  const when = j.issued_at.replace('T', ' ').replace(/\.\d+Z$/, ' UTC').replace(/Z$/, ' UTC')
  const L: string[] = [
    `PGI — Codes d'accès du serveur PGI de l'établissement`,
    `=====================================================`,
    ``,
    `Établissement : ${j.establishment.name} (UAI ${j.establishment.uai}), académie ${j.establishment.academie}`,
    `Destinataire  : ${j.ami.name} (AMI)`,
    `Émis le       : ${when} (${j.issued_by})`,
    ``,
    `Ce document a été chiffré pour vous seul, avec votre clé age. Gardez-le en lieu sûr et ne`,
    `le transférez pas : ses mots de passe donnent un accès administrateur au serveur PGI. Un`,
    `nouveau document remplace le précédent (après un changement des mots de passe par la Région).`,
    ``,
    `1. Le serveur (machine virtuelle ${j.vm.name})`,
    `   Adresse IP            : ${j.vm.address}`,
    ...(j.vm.note ? [`   Remarque              : ${j.vm.note}`] : []),
    `   Connexion à distance  : ${sshCmd}`,
    `   Identifiant           : ${j.ssh.login}`,
    `   Mot de passe          : ${j.ssh.password}`,
    ...(fps.length > 0
      ? [`   Empreinte du serveur  : ${fps[0]}`, ...fps.slice(1).map((f) => `                           ${f}`), `   (à la première connexion, vérifiez que SSH affiche bien cette empreinte)`]
      : []),
    `   À quoi ça sert : intervenir sur le serveur pour un problème technique local (redémarrer`,
    `   un service, consulter les journaux, vérifier l'espace disque).`,
    `   Changer le mot de passe : connecté au serveur, tapez « passwd ».`,
    ``,
    `2. La base de données PostgreSQL (administrateur SQL)`,
    `   Serveur               : ${j.postgresql.host}, port ${j.postgresql.port}`,
    `   Identifiant           : ${j.postgresql.login}`,
    `   Mot de passe          : ${j.postgresql.password}`,
    `   Exemple               : psql "host=${j.postgresql.host} port=${j.postgresql.port} user=${j.postgresql.login} dbname=postgres"`,
    `   À quoi ça sert : gérer les bases de données du PGI (créer, sauvegarder et restaurer les`,
    `   dossiers des élèves et des enseignants).`,
    `   Changer le mot de passe : dans psql, tapez « \\password ${j.postgresql.login} ».`,
    ``,
    `3. Le compte administrateur de Tryton (le PGI)`,
    `   Identifiant           : ${j.tryton_admin.login}`,
    `   Mot de passe          : ${j.tryton_admin.password}`,
    ...databaseLines(j),
    `   À quoi ça sert : administrer le PGI lui-même (comptes des enseignants et des élèves,`,
    `   modules, paramètres de la société).`,
    `   Changer le mot de passe : dans Tryton, menu Utilisateur > Préférences > Changer le mot de passe.`,
    ``,
    `4. Le client léger (navigateur web)`,
    `   Adresse               : ${j.web_client.url}`,
    `   Rien à installer : ouvrez cette adresse dans un navigateur récent sur les postes des`,
    `   élèves et des enseignants, puis connectez-vous à la base « ${j.desktop_client.database} ».`,
    ...(j.console
      ? [
          `   Certificat du serveur : empreinte SHA-256`,
          `                           ${j.console.tls_sha256}`,
          `   (certificat propre au serveur : à la première visite, le navigateur le signale ; vérifiez`,
          `   que l'empreinte qu'il affiche est bien celle-ci avant de l'accepter)`,
        ]
      : []),
    ``,
    `5. Le client lourd (application Tryton pour ordinateur)`,
    `   Installez le client Tryton en version ${series} (la même version que le serveur ; sous Debian`,
    `   ou Ubuntu : paquet « tryton-client »), puis créez ce profil de connexion :`,
    `   Serveur               : ${hostPort(j.desktop_client.host, j.desktop_client.port)}`,
    `   Base de données       : ${j.desktop_client.database}`,
    `   Utilisateur           : ${j.desktop_client.username}`,
    `   (ou ajoutez ces lignes au fichier ~/.config/tryton/${series}/profiles.cfg) :`,
    `       [${j.establishment.name}]`,
    `       host = ${hostPort(j.desktop_client.host, j.desktop_client.port)}`,
    `       database = ${j.desktop_client.database}`,
    `       username = ${j.desktop_client.username}`,
    ``,
    ...consoleLines(j),
    `Si vous changez vous-même un mot de passe, prévenez les techniciens de la Région : leur`,
    `copie chiffrée ne serait plus à jour. Ils peuvent aussi renouveler tous les mots de passe`,
    `(commande « pgi credentials rotate ») et vous envoyer un nouveau document.`,
    ``,
    `Données du document pour l'outil pgi (ne pas modifier) :`,
    JSON_BEGIN,
    JSON.stringify(j, null, 2),
    JSON_END,
    ``,
  ]
  return L.join('\n')
}

/** The letter's section on the teachers' console, when the VM serves it. */
function consoleLines(j: HandoffJson): string[] {
  if (!j.console) return []
  return [
    `6. La console des enseignants (navigateur web)`,
    `   Adresse               : ${j.console.url}`,
    `   Page de l'AMI         : ${j.console.url}ami/connexion (identifiant ${j.postgresql.login} et le`,
    `                           mot de passe de l'administrateur SQL, section 2)`,
    `   Certificat            : le même que le client léger (empreinte ci-dessus, section 4)`,
    `   À quoi ça sert : les enseignants y créent, sauvegardent, réinitialisent et restaurent eux-mêmes`,
    `   les bases de leurs classes. Vous y créez leurs comptes (« Ajouter un enseignant ») : chacun`,
    `   reçoit un code à usage unique et choisit son mot de passe sur ${j.console.url}activer.`,
    `   Vous y lisez aussi le journal des actions. Les techniciens de la Région font de même avec`,
    `   « pgi db teacher add » et « pgi db audit ».`,
    ``,
  ]
}

/** The letter's lines about the databases: those the server has (read from it when the document was written). */
function databaseLines(j: HandoffJson): string[] {
  const dbs = j.databases
  if (!dbs) return [`   Base de données       : ${j.desktop_client.database}`]
  if (dbs.length === 0) {
    return [`   Bases de données      : aucune sur le serveur à la date de ce document (pgi status UAI les liste)`]
  }
  const one = (d: HandoffDatabase) => `« ${d.name} »${d.company ? ` (société ${d.company})` : ''}`
  return [
    `   ${dbs.length > 1 ? 'Bases de données      ' : 'Base de données       '}: ${one(dbs[0]!)}`,
    ...dbs.slice(1).map((d) => `                           ${one(d)}`),
    `   (les bases présentes sur le serveur quand ce document a été écrit ; le même compte`,
    `   administrateur ouvre chacune d'elles)`,
  ]
}

/** Reads the data block of a decrypted handoff. */
export function parseHandoff(text: string, file?: string): HandoffDocument {
  const bad = (why: string) =>
    new UserError(ErrorCode.HANDOFF_INVALID, `not a pgi handoff: ${why}`, {
      ...(file ? {where: {file}} : {}),
      suggestions: ['Open the .handoff.age file pgi wrote (its data block must be intact).'],
    })
  const b = text.indexOf(JSON_BEGIN)
  const e = text.indexOf(JSON_END, b + 1)
  if (b < 0 || e < 0) throw bad('no data block')
  let j: HandoffJson
  try {
    j = JSON.parse(text.slice(b + JSON_BEGIN.length, e)) as HandoffJson
  } catch (err) {
    throw bad(`the data block is not JSON (${(err as Error).message})`)
  }
  if (j?.format !== HANDOFF_FORMAT) throw bad(`unknown format "${String(j?.format)}" (expected ${HANDOFF_FORMAT})`)
  for (const k of ['establishment', 'ami', 'vm', 'ssh', 'postgresql', 'tryton_admin', 'web_client', 'desktop_client'] as const) {
    if (typeof j[k] !== 'object' || j[k] === null) throw bad(`missing "${k}"`)
  }
  return {
    format: HANDOFF_FORMAT,
    issuedAt: j.issued_at,
    issuedBy: j.issued_by,
    establishment: j.establishment,
    ami: j.ami,
    vm: j.vm,
    ssh: {host: j.ssh.host, port: j.ssh.port, login: j.ssh.login, password: new Secret(j.ssh.password), hostKeyFingerprints: j.ssh.host_key_fingerprints ?? []},
    postgresql: {host: j.postgresql.host, port: j.postgresql.port, login: j.postgresql.login, password: new Secret(j.postgresql.password)},
    trytonAdmin: {login: j.tryton_admin.login, password: new Secret(j.tryton_admin.password)},
    webClient: j.web_client,
    desktopClient: j.desktop_client,
    ...(Array.isArray(j.databases) ? {databases: j.databases.filter((d) => typeof d?.name === 'string').map((d) => ({name: d.name, company: typeof d.company === 'string' ? d.company : null}))} : {}),
    ...(j.console && typeof j.console.url === 'string' && typeof j.console.tls_sha256 === 'string' ? {console: {url: j.console.url, tlsSha256: j.console.tls_sha256}} : {}),
  }
}

/** Encrypts the rendered handoff to `recipient` alone (ASCII-armored age). */
export async function encryptHandoff(doc: HandoffDocument, recipient: string): Promise<string> {
  const e = new Encrypter()
  e.addRecipient(recipient)
  return armor.encode(await e.encrypt(renderHandoff(doc)))
}

/** Decrypts a handoff file with the AMI's identity file(s) and parses it. */
export async function openHandoff(file: string, identityFiles: string[]): Promise<{document: HandoffDocument; text: string}> {
  // a regular file, bounded (a handoff is a few KiB): a FIFO or /dev/zero must not hang pgi or fill its memory
  const r = await readRegularFile(file, 1024 * 1024, 'a handoff file')
  if (!r.ok) throw new UserError(ErrorCode.HANDOFF_INVALID, `the handoff file ${r.problem.message}`, {where: {file}})
  const data = r.data
  const d = new Decrypter()
  const recipients: string[] = []
  for (const f of identityFiles) {
    for (const id of await readIdentityFile(f)) {
      d.addIdentity(id.identity.reveal())
      recipients.push(id.recipient)
    }
  }
  let text: string
  try {
    const head = data.subarray(0, 34).toString('latin1')
    const bytes = head.startsWith('-----BEGIN AGE ENCRYPTED FILE-----') ? armor.decode(data.toString('utf8')) : new Uint8Array(data)
    text = await d.decrypt(bytes, 'text')
  } catch (err) {
    const notForUs = /no identity matched/i.test((err as Error).message)
    throw new UserError(
      ErrorCode.SECRET_DECRYPT,
      notForUs ? 'this handoff is not encrypted to the given key' : `the handoff could not be decrypted: ${(err as Error).message}`,
      {
        where: {file},
        details: {yourRecipients: recipients},
        suggestions: notForUs
          ? ['Use the age key of the AMI this handoff was written for (--identity). If the AMI has a new key, update ami.age_recipient in the inventory and run `pgi credentials handoff` again.']
          : ['The file may be damaged in transit: ask the Région to send it again.'],
        cause: err,
      },
    )
  }
  return {document: parseHandoff(text, file), text}
}

export interface IssueHandoffOptions {
  store: SecretStore
  /** Folder the file is written to (created if needed). */
  outDir: string
  connection?: HandoffConnection
  /** Overrides the fingerprints recorded in the store (`establishments/<UAI>/ssh-host-keys`). */
  sshHostKeyFingerprints?: string[]
  /** Overrides the Tryton series recorded in the store (`establishments/<UAI>/tryton-series`). */
  trytonSeries?: string
  /** Use these secrets instead of reading the store (rotation passes the new ones). */
  secrets?: EstablishmentSecrets
  /** The Tryton databases the VM has, read from it (handoffDatabases of `pgi-db list`); the letter lists them. */
  databases?: HandoffDatabase[]
  /** Overrides the certificate fingerprint recorded in the store (`establishments/<UAI>/tls-sha256`). */
  tlsSha256?: string
  now?: Date
  issuedBy?: string
  io?: Io
}

/** What was written. Never holds a secret. */
export interface HandoffIssued {
  uai: string
  file: string
  /** The only key that can open it. */
  recipient: string
  ami: string
  address: string
  issuedAt: string
}

/** Writes `<outDir>/<UAI>.handoff.age` for one establishment (atomically, mode 0600). */
export async function issueHandoff(est: Establishment, opts: IssueHandoffOptions): Promise<HandoffIssued> {
  const recipient = est.ami.ageRecipient?.trim()
  try {
    if (!recipient) throw new Error('no ami.age_recipient')
    new Encrypter().addRecipient(recipient)
  } catch (err) {
    throw new UserError(ErrorCode.INVENTORY_INVALID, `establishment ${est.uai}: the AMI's age public key is missing or invalid (${(err as Error).message})`, {
      where: {file: est.source.file, line: est.source.line, column: est.source.column, uai: est.uai},
      suggestions: ['Ask the AMI for their age public key (`age-keygen -o ami.key` prints it) and set ami.age_recipient in the inventory.'],
    })
  }
  if (!opts.secrets) await refuseDuringRotation(opts.store, est.uai)
  const secrets = opts.secrets ?? (await readEstablishmentSecrets(opts.store, est.uai))
  const fingerprints = opts.sshHostKeyFingerprints ?? (await readHostKeyFingerprints(opts.store, est.uai))
  const trytonSeries = opts.trytonSeries ?? (await readTrytonSeries(opts.store, est.uai))
  const tlsSha256 = opts.tlsSha256 ?? (await readTlsFingerprint(opts.store, est.uai))
  const doc = buildHandoff(est, secrets, {connection: opts.connection, sshHostKeyFingerprints: fingerprints, trytonSeries, now: opts.now, issuedBy: opts.issuedBy ?? (await pgiVersionLabel()), ...(opts.databases ? {databases: opts.databases} : {}), ...(tlsSha256 ? {tlsSha256} : {})})
  const outDir = resolve(opts.outDir)
  await mkdir(outDir, {recursive: true, mode: 0o700})
  const file = join(outDir, `${est.uai}${HANDOFF_SUFFIX}`)
  await writeFileAtomic(file, await encryptHandoff(doc, recipient), {mode: 0o600})
  opts.io?.info(`handoff for ${est.uai} written, readable only by ${est.ami.name}'s key`, {file})
  return {uai: est.uai, file, recipient, ami: est.ami.name, address: doc.vm.address, issuedAt: doc.issuedAt}
}

/** Records the VM's SSH host key fingerprints in the store, for the next handoffs. */
export async function recordHostKeyFingerprints(store: SecretStore, uai: string, fingerprints: string[]): Promise<void> {
  await store.put(hostKeysKey(uai), new Secret(fingerprints.join('\n')))
}

export async function readHostKeyFingerprints(store: SecretStore, uai: string): Promise<string[]> {
  const v = await store.tryGet(hostKeysKey(uai))
  return v ? v.reveal().split('\n').map((s) => s.trim()).filter(Boolean) : []
}

/** Records the Tryton series the VM runs ("7.0"), for the next handoffs. */
export async function recordTrytonSeries(store: SecretStore, uai: string, series: string): Promise<void> {
  if (!/^\d+\.\d+$/.test(series)) throw new Error(`not a Tryton series: ${JSON.stringify(series)}`)
  await store.put(trytonSeriesKey(uai), new Secret(series))
}

export async function readTrytonSeries(store: SecretStore, uai: string): Promise<string | undefined> {
  const v = (await store.tryGet(trytonSeriesKey(uai)))?.reveal().trim()
  return v && /^\d+\.\d+$/.test(v) ? v : undefined
}

let versionLabel: string | undefined
async function pgiVersionLabel(): Promise<string> {
  if (versionLabel) return versionLabel
  try {
    const pkg = JSON.parse(await readFile(join(packageRoot(), 'package.json'), 'utf8')) as {version?: string}
    versionLabel = `pgi ${pkg.version ?? ''}`.trim()
  } catch {
    versionLabel = 'pgi'
  }
  return versionLabel
}
