/**
 * The passwords of a class, for the AMI alone: `pgi db class` never prints them; they go into one
 * file per class, `<UAI>-<class>-<stamp>.class.age`, age-encrypted to the establishment's AMI
 * (inventory `ami.age_recipient`), as the handoff is. Decrypted (`age -d -i KEY FILE`), it is a
 * short French text and one line per student, `;`-separated (a spreadsheet opens it), for the
 * teacher to hand each student their login.
 */
import {access, mkdir, stat} from 'node:fs/promises'
import {constants} from 'node:fs'
import {dirname, join, resolve} from 'node:path'

import {armor, Encrypter} from 'age-encryption'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {Establishment} from '../inventory/types.js'
import {writeFileAtomic} from '../secrets/atomic.js'

export const CLASS_FILE_SUFFIX = '.class.age'

export interface ClassAccount {
  database: string
  login: string
  password: string
  lastName?: string
  firstName?: string
  line?: number
}

/** Throws (nothing done yet) unless the AMI's key is usable and `outDir` can be written. */
export async function checkPasswordsTarget(est: Establishment, outDir: string, what = {secret: "the students' passwords", file: 'the class passwords'}): Promise<string> {
  const recipient = est.ami.ageRecipient?.trim()
  try {
    if (!recipient) throw new Error('no ami.age_recipient')
    new Encrypter().addRecipient(recipient)
  } catch (err) {
    throw new UserError(ErrorCode.INVENTORY_INVALID, `establishment ${est.uai}: the AMI's age public key is missing or invalid (${(err as Error).message}): ${what.secret} could not be given to anyone`, {
      exitCode: ExitCode.INVALID_INPUT,
      where: {file: est.source.file, line: est.source.line},
      suggestions: ['Ask the AMI for their age public key (`age-keygen -o ami.key` prints it) and set ami.age_recipient in the inventory. Nothing was created.'],
    })
  }
  const dir = resolve(outDir)
  try {
    await makeDirs(dir)
    await access(dir, constants.W_OK)
  } catch (err) {
    throw new UserError(ErrorCode.USAGE, `cannot write ${what.file} into ${dir}: ${(err as Error).message}`, {
      exitCode: ExitCode.USAGE,
      where: {flag: 'out'},
      suggestions: ['Give a folder you can write with --out. Nothing was created.'],
    })
  }
  return recipient!
}

/**
 * mkdir -p, one level at a time: Node's own recursive mkdir never returns under /proc (it retries
 * the ENOENT it gets there forever), so a mistyped --out would hang the command.
 */
async function makeDirs(dir: string): Promise<void> {
  const missing: string[] = []
  let d = dir
  while (!(await stat(d).then(() => true, () => false))) {
    missing.unshift(d)
    const up = dirname(d)
    if (up === d) break
    d = up
  }
  for (const m of missing) await mkdir(m, {mode: 0o700})
}

function csvCell(s: string): string {
  return /[;"\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
}

/** The text the AMI decrypts. */
export function renderClassPasswords(o: {est: Establishment; label: string; model: string; mode: string; teacher?: ClassAccount; students: ClassAccount[]; at: string}): string {
  const lines = [
    `Classe « ${o.label} » — ${o.est.name} (UAI ${o.est.uai})`,
    `Créée le ${o.at} à partir de la base « ${o.model} » (${o.mode === 'shared' ? 'une base partagée par la classe' : 'une base par élève'}).`,
    '',
    'Ce fichier a été chiffré pour vous seul (clé age de l\'AMI). Remettez à chaque élève son identifiant et son',
    'mot de passe Tryton ; l\'enseignant reçoit le sien. Personne d\'autre n\'en a de copie : pgi ne les garde pas.',
    '',
  ]
  if (o.teacher) lines.push(`Enseignant : identifiant ${o.teacher.login}, mot de passe ${o.teacher.password} (dans chaque base de la classe)`, '')
  else lines.push('Enseignant : son compte existait déjà dans la base modèle (mot de passe inchangé).', '')
  lines.push('base;identifiant;mot de passe;nom;prénom;ligne du fichier')
  for (const s of o.students) lines.push([s.database, s.login, s.password, s.lastName ?? '', s.firstName ?? '', String(s.line ?? '')].map(csvCell).join(';'))
  return lines.join('\n') + '\n'
}

/** Encrypts the class's passwords to the AMI and writes the file (atomically, mode 0600); returns its path. */
export async function writeClassPasswords(o: {est: Establishment; outDir: string; label: string; model: string; mode: string; teacher?: ClassAccount; students: ClassAccount[]; now?: Date}): Promise<string> {
  const recipient = await checkPasswordsTarget(o.est, o.outDir)
  const now = o.now ?? new Date()
  const at = now.toISOString().replace(/\.\d{3}Z$/, 'Z')
  const stamp = at.replace(/[-:]/g, '')
  const safe = o.label.normalize('NFKD').replace(/\p{M}/gu, '').replace(/[^A-Za-z0-9]+/g, '-').replace(/^-+|-+$/g, '').toLowerCase().slice(0, 40) || 'classe'
  const file = join(resolve(o.outDir), `${o.est.uai}-${safe}-${stamp}${CLASS_FILE_SUFFIX}`)
  const e = new Encrypter()
  e.addRecipient(recipient)
  await writeFileAtomic(file, armor.encode(await e.encrypt(renderClassPasswords({...o, at}))), {mode: 0o600})
  return file
}
