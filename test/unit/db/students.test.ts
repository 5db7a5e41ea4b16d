/**
 * The host's reading of a student list (src/db/students.ts) against the engine's own
 * (pgidb.read_students, run with Debian's python3 on the same bytes): the same students, the
 * same bad lines with the same numbers, for the shapes school software exports and the mistakes
 * people make. The host refuses what the engine would refuse, before the VM is asked anything.
 */
import {execFileSync} from 'node:child_process'
import {join} from 'node:path'

import {describe, expect, it} from 'vitest'

import {readStudents} from '../../../src/db/students.js'
import {ROOT} from '../../helpers/cli.js'

const LIB = join(ROOT, 'images', 'pgi-tryton', 'files', 'usr', 'local', 'lib', 'pgi')

function engine(data: Buffer): {students: unknown[]; errors: unknown[]} {
  const out = execFileSync('/usr/bin/python3', ['-c', `import sys, json; sys.path.insert(0, ${JSON.stringify(LIB)}); import pgidb; print(json.dumps(pgidb.read_students(sys.stdin.buffer.read())))`], {input: data})
  const [students, errors] = JSON.parse(out.toString()) as [{line: number; last_name: string; first_name: string; class: string | null}[], unknown[]]
  return {students: students.map((s) => ({line: s.line, lastName: s.last_name, firstName: s.first_name, class: s.class})), errors}
}

const CASES: Record<string, Buffer> = {
  'header, ; and UTF-8 with BOM': Buffer.from('\ufeffNom;Prénom;Classe\nDUPONT;Jean;BTS CG1\nMARTIN;Léa;BTS CG1\n'),
  'Windows-1252, CRLF, columns in another order, blank lines': Buffer.from('Classe;Prénom;Nom\r\n\r\nBTS CG1;Émile;LEROY\r\nBTS CG1;Zoé;N\'DIAYE\r\n', 'latin1'),
  'commas and quoted fields with a separator and a quote inside': Buffer.from('nom,prenom,division\n"DE LA FONTAINE, Jean",Jean,"BTS ""NDRC"" 1"\nDURAND,Paul,BTS NDRC1\n'),
  'tabs, no header': Buffer.from('DUPONT\tJean\tBTS CG2\nMARTIN\tLéa\n'),
  'one "élève" column': Buffer.from('Élève;Division\nDUPONT Jean;BTS CG1\nMARTIN Léa Marie;BTS CG1\nsans majuscules;BTS CG1\n'),
  'bad lines: missing names, too long, unreadable, no letter': Buffer.from(`Nom;Prénom;Classe\n;Léa;x\nMARTIN;;x\n${'A'.repeat(81)};Jean;x\nDU\u0007PONT;Jean;x\n---;Jean;x\nOK;Bon;${'c'.repeat(41)}\nBON;Élève;BTS\n`),
  'a quoted field over two lines': Buffer.from('Nom;Prénom;Classe\n"DUPONT\nJUNIOR";Jean;x\nMARTIN;Léa;x\n'),
  empty: Buffer.from('\n\n'),
  'a header only': Buffer.from('Nom;Prénom;Classe\n'),
  'more than 500 students': Buffer.from(['Nom;Prénom', ...Array.from({length: 502}, (_, i) => `ELEVE${i};Prénom`)].join('\n')),
}

describe('student list: the host reads it as the engine does', () => {
  for (const [name, data] of Object.entries(CASES)) {
    it(name, () => {
      expect(readStudents(data)).toEqual(engine(data))
    })
  }

  it('reports every bad line with its number', () => {
    const r = readStudents(CASES['bad lines: missing names, too long, unreadable, no letter']!)
    expect(r.errors.map((e) => e.line)).toEqual([2, 3, 4, 5, 6, 7])
    expect(r.students.map((s) => s.line)).toEqual([8])
  })
})
