#!/usr/bin/python3
"""pgisplit: a pg_dump custom-format archive cut into pieces along its own structure, so that the
off-site copy (restic) sends only what changed since the night before, and joined back
byte for byte.

Why: restic cuts files into chunks of 0.5 to 8 MiB (about 1 MiB on average; not configurable)
and a teaching database dumps to about 4 MB, so a change in one table re-sent the chunk holding
it and its neighbours; and the archive's table of contents holds every data block's byte offset,
so one table that grew changed the offsets of every later table, all over the table of contents.
pg_dump has no option for either. Cut here:

- the table of contents into runs of entries (what comes before the data section, each kind of
  entry in the data section — table data, sequence values —, what comes after), with the data
  blocks' offsets blanked out and each sequence's value (with whether it was called) written as
  one '0': the runs of a database whose schema did not change are the same bytes every night;
  the values go to index.json, the offsets are found again at join (where each block starts);
- the data blocks into groups keyed by the blocks' dump ids (a group starts at a block whose id
  hashes to a multiple of GROUP, and every block of BIG bytes or more is a group of its own, cut
  again at rows chosen by their content): the same tables and rows fall into the same pieces
  night after night, and a day of class work rewrites only the pieces of the rows it touched;
- the pieces into subfolders (toc/ for the table of contents, FANOUT dat-x/ for the small tables'
  groups, FANOUT big-x/ for the big tables' pieces), so that restic's listing of a folder, stored
  again whole whenever one file in it changes, stays small.

A folder of pieces (format pgi-split/2) holds:
- layout.json, changed only with the schema: {"format", "offset_positions": [position, …] and
  "offset_ids": [dump id, …] (where each offset goes, and the block it points at), "offset_bytes",
  "int_size", "data_start" (where the data blocks start), "value_positions": [[position of the
  definition's length, position of the value], …]};
- pieces.json, changed only when a big table gains or loses a cut: {"format", "pieces": [path, …]
  in order};
- index.json, changed with the data: {"format", "size" and "sha256" of the whole archive, "sizes"
  of the pieces, "values": the sequences' values as text ("42, true")};
- the pieces, in subfolders, and .digests (their sha256, to tell which changed; never sent).
Positions are in the pieces' bytes (each sequence's value one character). Joined: the pieces one
after the other, each sequence's value written back in place of its '0' (its definition's length
raised to match), then each offset found again (the data blocks read) and written back; each
piece's size, then the result's size and sha256 are checked against index.json (and the backup
manifest's sha256 by the caller). pgi-split/1 folders (the pieces' names in layout.json, the
offsets' bytes in index.json, the values left in the pieces) are read too.
Nothing here needs PostgreSQL: `python3 pgisplit.py join FOLDER OUT` works on any machine with
Python 3 (the Région's restore runbook, docs/backups.md).

The archive format read here is pg_dump's (src/bin/pg_dump/pg_backup_archiver.c: WriteHead,
WriteToc; pg_backup_custom.c: the offsets and the data blocks), archive versions 1.14 to 1.16
(PostgreSQL 12 to 17). Anything else — another format, another version, a block that does not
parse, offsets that do not point at the blocks — is not split (split() returns None) and the
caller sends the file whole, as before. Written here because no tool splits an archive this way
(pg_restore reads archives, it does not rewrite them).
"""
import bisect
import hashlib
import json
import os
import re
import sys
import zlib

# pgi-split/2 added the sequences' values (below); a join reads both
FORMAT = 'pgi-split/2'
FORMATS = ('pgi-split/1', FORMAT)
# a sequence's value in its SEQUENCE SET entry ("SELECT pg_catalog.setval('public.x_id_seq', 42,
# true);", as pg_dump's dumpSequenceData writes it: the value and whether it was called): blanked
# in the table of contents' piece and kept in index.json, so that a day's new rows do not rewrite
# the piece of every sequence's entry (~50 kB for a Tryton database: 5 kB compressed a night,
# per database written to)
SETVAL = re.compile(rb"setval\('(?:[^']|'')*', (-?[0-9]+, (?:true|false))\);")
VALUE = re.compile('-?[0-9]+, (?:true|false)')
# a data block of this many bytes or more is a piece of its own, cut again at rows (ROWS): a
# posted invoice then rewrites the invoices' table alone, not the 30 kB of static tables (taxes,
# accounts' templates) it was grouped with (bench/backup: 16 KiB 5.0 %, 64 KiB 5.35 % of the first
# push for the second night)
BIG = 16 << 10
# a group of small blocks starts at each item whose dump id hashes
# (crc32) to a multiple of this: about GROUP items per piece, so a Tryton database (~200 tables
# with data) makes ~60 pieces, not 200 files whose metadata alone would outweigh a night's
# changes (measured with bench/backup: 4 and 8 within 1 % of each other, 8 slightly smaller)
GROUP = 8
SECTION_DATA = 3           # teSection: SECTION_NONE = 1, PRE_DATA, DATA, POST_DATA
K_OFFSET_POS_SET = 2
BLK_DATA, BLK_BLOBS = 1, 3
READ = 1 << 20
# the pieces' sha256, to tell which changed since the last split: kept beside them and never sent
# (pgi-offsite excludes it; index.json, sent again whenever a dump changes, would grow by 64
# incompressible hex digits a piece); a join checks each piece's size and the whole's sha256
CACHE = '.digests'
FANOUT = 8
# a big table's block is cut after each row (a chunk of the archive: pg_dump writes a table's COPY
# data row by row) whose bytes hash (crc32) to a multiple of this: pieces of ~ROWS rows, a few
# tens of kB (restic's own chunks, 0.5 to 8 MiB, would send a whole 1 MiB table again for a
# few rows appended to it); no piece under BIG/16 bytes
ROWS = 256


class NotSplittable(Exception):
    pass


class _Reader:
    """Reads the archive's integers, strings and offsets as pg_backup_archiver.c writes them."""

    def __init__(self, f):
        self.f = f
        self.int_size = 4
        self.off_size = 8

    def pos(self):
        return self.f.tell()

    def bytes(self, n):
        b = self.f.read(n)
        if len(b) != n:
            raise NotSplittable('archive ends early')
        return b

    def byte(self):
        return self.bytes(1)[0]

    def int(self):
        # sign byte, then int_size bytes, least significant first
        sign = self.byte()
        v = int.from_bytes(self.bytes(self.int_size), 'little')
        return -v if sign else v

    def str(self):
        n = self.int()
        if n < 0:
            return None
        if n > 1 << 30:
            raise NotSplittable('a string of %d bytes' % n)
        return self.bytes(n).decode('utf-8', 'replace')


def _layout(path):
    """Where the header, the table of contents' entries and the data blocks of the archive at path
    start and end. Raises NotSplittable for anything this module does not read."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        r = _Reader(f)
        if r.bytes(5) != b'PGDMP':
            raise NotSplittable('not a pg_dump archive')
        vmaj, vmin, vrev = r.byte(), r.byte(), r.byte()
        if vmaj != 1 or not 14 <= vmin <= 16:
            raise NotSplittable('archive version %d.%d.%d' % (vmaj, vmin, vrev))
        r.int_size, r.off_size = r.byte(), r.byte()
        if r.int_size not in (4, 8) or r.off_size not in (4, 8):
            raise NotSplittable('int size %d, offset size %d' % (r.int_size, r.off_size))
        if r.byte() != 1:  # archCustom
            raise NotSplittable('not the custom format')
        if vmin >= 15:
            r.byte()                # compression algorithm (1.15)
        else:
            r.int()                 # compression level
        for _ in range(7):          # creation time (struct tm)
            r.int()
        r.str()                     # database name
        r.str()                     # server version
        r.str()                     # pg_dump version
        count = r.int()
        if not 0 <= count <= 10_000_000:
            raise NotSplittable('%d entries' % count)
        entries = []
        for _ in range(count):
            start = r.pos()
            dump_id = r.int()
            r.int()                 # had dumper
            r.str()                 # table oid
            r.str()                 # oid
            r.str()                 # tag
            desc = r.str()
            section = r.int()
            defn_pos = r.pos() + 1 + r.int_size
            defn = r.str()          # definition
            for _ in range(4):      # drop, copy statement, namespace, tablespace
                r.str()
            r.str()                 # table access method (1.14)
            if vmin >= 16:
                r.int()             # relkind
            r.str()                 # owner
            r.str()                 # "false" (with oids)
            while r.str() is not None:  # dependencies, ended by a null string
                pass
            off_pos = r.pos()
            raw = r.bytes(1 + r.off_size)   # flag, then the offset
            value = None
            if section == SECTION_DATA and desc == 'SEQUENCE SET' and defn:
                m = SETVAL.search(defn.encode('utf-8'))
                if m and defn.isascii():
                    # where the digits are, how many, where the definition's length is written
                    value = (defn_pos + m.start(1), m.end(1) - m.start(1), defn_pos - 1 - r.int_size)
            entries.append({'start': start, 'end': r.pos(), 'id': dump_id, 'key': (section, desc) if section == SECTION_DATA else 'schema',
                            'off_pos': off_pos, 'off_raw': raw, 'flag': raw[0], 'offset': int.from_bytes(raw[1:], 'little'),
                            'value': value})
        toc_end = r.pos()
        blocks = list(_blocks(r, size, True))
    by_id = {b['id']: b['start'] for b in blocks}
    for e in entries:
        if e['flag'] == K_OFFSET_POS_SET and by_id.get(e['id']) != e['offset']:
            raise NotSplittable('entry %d points at %d, not at its data block' % (e['id'], e['offset']))
    return {'size': size, 'entries': entries, 'toc_end': toc_end, 'blocks': blocks, 'int_size': r.int_size,
            'values': [e['value'] for e in entries if e['value']]}


def _blocks(r, size, labels):
    """The data blocks from the reader's position to size (pg_backup_custom.c: a block's type
    and dump id, then its data in chunks, each its length then its bytes, ended by a length 0;
    large objects' blocks: each object's oid and chunks, ended by an oid 0), as {"start", "end",
    "id", "cuts"}; with labels, "cuts" lists where a table's block may be cut: after each chunk
    (a row) whose crc32 is a multiple of ROWS, [(position, crc32)]."""
    while r.pos() < size:
        start = r.pos()
        kind = r.byte()
        dump_id = r.int()
        if kind not in (BLK_DATA, BLK_BLOBS):
            raise NotSplittable('data block of type %d at %d' % (kind, start))
        cuts = []
        while True:
            if kind == BLK_BLOBS and r.int() == 0:
                break
            while True:
                n = r.int()
                if n == 0:
                    break
                if n < 0 or r.pos() + n > size:
                    raise NotSplittable('a data chunk runs past the end of the archive')
                if labels and kind == BLK_DATA and n <= 1 << 20:
                    label = zlib.crc32(r.bytes(n))
                    if label % ROWS == 0:
                        cuts.append((r.pos(), label))
                else:
                    r.f.seek(n, 1)
            if kind == BLK_DATA:
                break
        yield {'start': start, 'end': r.pos(), 'id': dump_id, 'cuts': cuts}
    if r.pos() != size:
        raise NotSplittable('the last data block runs past the end of the archive')


def _cut(item_id):
    """Whether a group of small items starts at the item with this dump id: keyed by the id (a
    table's or a sequence's), not by sizes or positions, so the same items fall into the same
    pieces night after night."""
    return zlib.crc32(b'%d' % item_id) % GROUP == 0


def _pieces(lay):
    """[(name, start, end)] covering the whole archive in order, named after their first item's
    dump id (stable from one night to the next)."""
    out = []
    # the table of contents: the header with the schema entries before the data section, then a
    # run per change of kind (schema / each type of data-section entry), the table data entries
    # (offsets blanked) cut into groups; the sequences' values (they change with the rows, a few
    # bytes each) stay one piece: one small piece rewritten rather than several
    start, key = 0, 'schema'
    name = 'toc-0000000'
    for e in lay['entries']:
        if e['key'] != key or (e['key'] == (SECTION_DATA, 'TABLE DATA') and _cut(e['id'])):
            if e['start'] > start:
                out.append((name, start, e['start']))
            start, key, name = e['start'], e['key'], 'toc-%07d' % e['id']
    out.append((name, start, lay['toc_end']))
    group = None
    for b in lay['blocks']:
        big = b['end'] - b['start'] >= BIG
        if group is None or big or group[3] or _cut(b['id']):
            if group is not None:
                out.append(tuple(group[:3]))
            group = ['%s-%07d' % ('big' if big else 'data', b['id']), b['start'], b['end'], big]
        else:
            group[2] = b['end']
        if big:
            # a big table cut further, after the rows whose bytes hash to a multiple of ROWS: rows
            # appended or changed rewrite the pieces around them only; each piece after the first
            # is named after the row it follows (the same cut, the same name, night after night)
            seen = set()
            for pos, label in b['cuts']:
                if pos - group[1] < (BIG >> 4) or b['end'] - pos < (BIG >> 4):
                    continue
                name = 'big-%07d-%08x' % (b['id'], label)
                k = 1
                while name in seen:
                    k += 1
                    name = 'big-%07d-%08x-%d' % (b['id'], label, k)
                seen.add(name)
                out.append((group[0], group[1], pos))
                group = [name, pos, b['end'], True]
    if group is not None:
        out.append(tuple(group[:3]))
    return out


def _place(name):
    """Where a piece goes in its folder: one of FANOUT subfolders by its name's sha1 (FANOUT for
    the table of contents' pieces, FANOUT for the data's). restic stores a folder's listing
    (every file's name, times, inode and chunk ids) as one blob, written again whenever one file
    in it changes: ~170 pieces in one folder made that listing the largest part of a night's push."""
    if name.startswith('toc'):
        return 'toc/%s' % name
    return '%s-%x/%s' % (name[:3], hashlib.sha1(name.encode()).digest()[0] % FANOUT, name)


def _blank(buf, start, lay):
    """buf (the bytes of the archive from start) in the pieces' form: the offsets inside it
    zeroed, each sequence's value written as one '0' (its definition's length lowered to match),
    so that neither the values nor their number of digits change the piece."""
    buf = bytearray(buf)
    for e in lay['entries']:
        if e['flag'] == K_OFFSET_POS_SET and start <= e['off_pos'] < start + len(buf):
            i = e['off_pos'] - start
            buf[i:e['end'] - start] = bytes(e['end'] - e['off_pos'])
    w = lay['int_size']
    for pos, n, len_pos in reversed(lay['values']):
        if start <= len_pos and pos + n <= start + len(buf):
            i, j = pos - start, len_pos - start
            buf[i:i + n] = b'0'
            buf[j + 1:j + 1 + w] = (int.from_bytes(buf[j + 1:j + 1 + w], 'little') - (n - 1)).to_bytes(w, 'little')
    return bytes(buf)


def _shift(values):
    """values: [(position, number of digits)] in order. A function giving, for a position, how many
    bytes the values before it take beyond one character each: what separates a place in the
    archive from the same place in the pieces (where each value is one '0')."""
    starts = [p for p, _ in values]
    shifts = [0]
    for _, n in values:
        shifts.append(shifts[-1] + n - 1)
    return lambda pos: shifts[bisect.bisect_left(starts, pos)]


def _canonical(lay):
    """A function from a position in the archive to the same place in the pieces."""
    shift = _shift([(pos, n) for pos, n, _ in lay['values']])
    return lambda pos: pos - shift(pos)


def split(path, folder):
    """Writes the pieces of the archive at path into folder (made if missing), rewriting only the
    pieces whose bytes differ from what folder's digests say it holds (an unchanged piece
    keeps its file: same inode and times, so restic neither reads it again nor records new
    metadata). Returns {"pieces", "written", "bytes_written"}, or None when path is not an
    archive this module splits (the caller then sends it whole)."""
    try:
        lay = _layout(path)
    except (NotSplittable, UnicodeDecodeError, OverflowError) as e:
        sys.stderr.write('pgisplit: %s sent whole: %s\n' % (path, e))
        return None
    pieces = _pieces(lay)
    os.makedirs(folder, 0o700, exist_ok=True)
    index_path = os.path.join(folder, 'index.json')
    cache_path = os.path.join(folder, CACHE)
    old_bytes, old = None, {}
    try:
        with open(index_path, 'rb') as f:
            old_bytes = f.read()
        with open(cache_path) as f:
            old = {n: tuple(v) for n, v in json.load(f).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        old = {}
    # first pass: every piece's digest (the table of contents' runs with their offsets blanked)
    whole = hashlib.sha256()
    listed, todo, digests = [], [], {}
    with open(path, 'rb') as f:
        for name, start, end in pieces:
            name = _place(name)
            h = hashlib.sha256()
            size = end - start
            if name.startswith('toc'):
                raw = b''.join(_chunks(f, start, end))
                whole.update(raw)
                blanked = _blank(raw, start, lay)
                size = len(blanked)
                h.update(blanked)
            else:
                for b in _chunks(f, start, end):
                    whole.update(b)
                    h.update(b)
            digests[name] = (size, h.hexdigest())
            listed.append([name, size])
            if old.get(name) != digests[name] or not os.path.isfile(os.path.join(folder, name)):
                todo.append((name, start, end))
    offs = [e for e in lay['entries'] if e['flag'] == K_OFFSET_POS_SET]
    vals = lay['values']
    canon = _canonical(lay)
    with open(path, 'rb') as f:
        toc = f.read(lay['toc_end'])
    # what changes with the data (index.json: the archive's size and digest, the pieces' sizes,
    # the sequences' values) apart from what changes only with the schema (layout.json: where the
    # offsets and the values go) and what changes only when a big table gains or loses a cut
    # (pieces.json: the pieces' names in order): a night of class work sends index.json again
    layout = {'format': FORMAT, 'offset_positions': [canon(e['off_pos']) for e in offs], 'offset_ids': [e['id'] for e in offs],
              'offset_bytes': len(offs[0]['off_raw']) if offs else 0, 'int_size': lay['int_size'], 'data_start': canon(lay['toc_end']),
              'value_positions': [[canon(len_pos), canon(pos)] for pos, _, len_pos in vals]}
    index = {'format': FORMAT, 'size': lay['size'], 'sha256': whole.hexdigest(), 'sizes': [p[1] for p in listed],
             'values': [toc[p:p + n].decode('ascii') for p, n, _ in vals]}
    meta = {n: json.dumps(o, separators=(',', ':')).encode()
            for n, o in (('layout.json', layout), ('pieces.json', {'format': FORMAT, 'pieces': [p[0] for p in listed]}), ('index.json', index))}
    meta = {n: b for n, b in meta.items() if b != (old_bytes if n == 'index.json' else _read(os.path.join(folder, n)))}
    names = {p[0] for p in listed} | {'index.json', 'layout.json', 'pieces.json', CACHE}
    stale = [os.path.relpath(os.path.join(d, n), folder) for d, _, ns in os.walk(folder) for n in ns]
    stale = [n for n in stale if n not in names]
    if not todo and not stale and not meta:
        return {'pieces': len(listed), 'written': 0, 'bytes_written': 0, 'sha256': index['sha256']}
    # no digests while pieces change: a run cut here leaves none, and the next one rewrites every piece
    if os.path.exists(cache_path):
        os.unlink(cache_path)
    nbytes = 0
    with open(path, 'rb') as f:
        for name, start, end in todo:
            target = os.path.join(folder, name)
            os.makedirs(os.path.dirname(target), 0o700, exist_ok=True)
            if name.startswith('toc'):
                _write(target, [_blank(b''.join(_chunks(f, start, end)), start, lay)])
            else:
                _write(target, _chunks(f, start, end))
            nbytes += end - start
    for n in stale:
        os.unlink(os.path.join(folder, n))
    for d, dirs, ns in os.walk(folder, topdown=False):
        if d != folder and not os.listdir(d):
            os.rmdir(d)
    # index.json last: the pieces it describes are in place when it is
    for n in sorted(meta, key=lambda n: n == 'index.json'):
        _write(os.path.join(folder, n), [meta[n]])
    _write(cache_path, [json.dumps(digests, separators=(',', ':')).encode()])
    return {'pieces': len(listed), 'written': len(todo), 'bytes_written': nbytes, 'sha256': index['sha256']}


def _read(path):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError:
        return None


def _chunks(f, start, end):
    f.seek(start)
    left = end - start
    while left:
        b = f.read(min(READ, left))
        if not b:
            raise OSError('file shorter than expected')
        left -= len(b)
        yield b


def _write(path, chunks):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as out:
        for b in chunks:
            out.write(b)
    os.rename(tmp, path)


class JoinError(Exception):
    pass


def join(folder, out_path):
    """Writes the archive the pieces in folder were cut from to out_path, checking each piece and
    the whole against index.json. Raises JoinError (what is wrong, where) and leaves no output."""
    try:
        with open(os.path.join(folder, 'layout.json')) as f:
            lay = json.load(f)
        with open(os.path.join(folder, 'index.json')) as f:
            idx = json.load(f)
        if 'pieces' in lay:
            names = lay['pieces']       # pgi-split/1: the pieces' names in layout.json
        else:
            with open(os.path.join(folder, 'pieces.json')) as f:
                names = json.load(f)['pieces']
        pieces = list(zip(names, idx['sizes'], strict=True))
        if not all(isinstance(n, str) and isinstance(z, int) and '..' not in n.split('/') and not n.startswith('/') for n, z in pieces):
            raise ValueError('a piece that is not [name, size] in the folder')
        width = lay['offset_bytes']
        if 'offsets' in idx:
            # pgi-split/1: the offsets' bytes in index.json
            raw = bytes.fromhex(idx['offsets'])
            offsets = [(p, raw[i * width:(i + 1) * width]) for i, p in enumerate(lay['offset_positions'])]
            if len(raw) != width * len(offsets):
                raise ValueError('%d offset bytes for %d offsets' % (len(raw), len(offsets)))
        else:
            # pgi-split/2: each offset is where its entry's data block starts, found again here
            offsets = list(zip(lay['offset_positions'], lay['offset_ids'], strict=True))
            if width not in (5, 9) or not isinstance(lay['data_start'], int):
                raise ValueError('offsets of %r bytes' % width)
        # the sequences' values: [(where the definition's length is, where the value's '0' is,
        # the value's digits)], in the pieces' positions, in order
        values = []
        for (len_pos, pos), v in zip(lay.get('value_positions', []), idx.get('values', []), strict=True):
            if not (isinstance(pos, int) and isinstance(len_pos, int) and isinstance(v, str) and VALUE.fullmatch(v)):
                raise ValueError('sequence value %r at %r' % (v, pos))
            if values and pos <= values[-1][1]:
                raise ValueError('sequence values out of order at %d' % pos)
            values.append((len_pos, pos, v.encode('ascii')))
        int_size = lay.get('int_size', 4)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise JoinError('%s: no readable layout.json and index.json (%s)' % (folder, e))
    if lay.get('format') not in FORMATS or idx.get('format') not in FORMATS:
        raise JoinError('%s: not a folder of pieces this pgisplit reads (%s; it reads %s)' % (folder, idx.get('format'), ', '.join(FORMATS)))
    tmp = out_path + '.joining'
    whole = hashlib.sha256()
    starts = [v[1] for v in values]
    shift = _shift([(pos, len(digits)) for _, pos, digits in values])
    try:
        with open(tmp, 'w+b') as out:
            c = 0   # where the piece starts in the pieces' positions
            for name, size in pieces:
                p = os.path.join(folder, name)
                lo, hi = bisect.bisect_left(starts, c), bisect.bisect_left(starts, c + size)
                n = 0
                try:
                    with open(p, 'rb') as f:
                        if lo < hi:
                            # a piece of the table of contents holding sequences' values: each
                            # written back in place of its '0', its definition's length raised
                            buf = bytearray(f.read(size + 1))
                            n = len(buf)
                            if n != size:
                                raise JoinError('%s: piece %s is not what was split (%s bytes; index.json says %d)' % (folder, name, n if n < size else 'more than %d' % size, size))
                            for len_pos, pos, digits in reversed(values[lo:hi]):
                                i, j = pos - c, len_pos - c
                                if not 0 <= j < i < n or buf[i:i + 1] != b'0':
                                    raise JoinError('%s: piece %s is not what was split (no sequence value at %d)' % (folder, name, pos))
                                buf[i:i + 1] = digits
                                w = buf[j + 1:j + 1 + int_size]
                                buf[j + 1:j + 1 + int_size] = (int.from_bytes(w, 'little') + len(digits) - 1).to_bytes(int_size, 'little')
                            out.write(buf)
                        else:
                            while True:
                                b = f.read(READ)
                                if not b:
                                    break
                                n += len(b)
                                out.write(b)
                except OSError as e:
                    raise JoinError('%s: piece %s missing or unreadable (%s)' % (folder, name, e))
                except OverflowError:
                    raise JoinError('%s: piece %s is not what was split (a sequence value does not fit)' % (folder, name))
                if n != size:
                    raise JoinError('%s: piece %s is not what was split (%d bytes; index.json says %d)' % (folder, name, n, size))
                c += size
            moved = lambda pos: pos + shift(pos)  # noqa: E731
            if 'offsets' not in idx:
                # where each data block starts (the blocks after the table of contents, read again)
                r = _Reader(out)
                r.int_size = lay['int_size']
                out.seek(moved(lay['data_start']))
                try:
                    at = {b['id']: b['start'] for b in _blocks(r, c + shift(c), False)}
                except NotSplittable as e:
                    raise JoinError('%s: the joined archive is not the one split (its data blocks do not read: %s)' % (folder, e))
                missing = [i for _, i in offsets if i not in at]
                if missing:
                    raise JoinError('%s: the joined archive is not the one split (no data block for entries %s)' % (folder, missing[:5]))
                offsets = [(pos, bytes([K_OFFSET_POS_SET]) + at[i].to_bytes(width - 1, 'little')) for pos, i in offsets]
            for pos, value in offsets:
                # an offset's place in the archive: its place in the pieces, moved by the digits
                # of the sequences' values before it
                out.seek(moved(pos))
                out.write(value)
            out.seek(0)
            while True:
                b = out.read(READ)
                if not b:
                    break
                whole.update(b)
            if out.tell() != idx['size'] or whole.hexdigest() != idx['sha256']:
                raise JoinError('%s: the joined archive (%d bytes) is not the one split (%d bytes, sha256 %s…)' % (folder, out.tell(), idx['size'], idx['sha256'][:12]))
        os.rename(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv):
    if len(argv) == 3 and argv[0] == 'join':
        try:
            join(argv[1], argv[2])
        except JoinError as e:
            sys.stderr.write('pgisplit: %s\n' % e)
            return 1
        return 0
    if len(argv) == 3 and argv[0] == 'split':
        r = split(argv[1], argv[2])
        print(json.dumps(r))
        return 0 if r else 1
    sys.stderr.write('usage: pgisplit.py join FOLDER OUT | split ARCHIVE FOLDER\n')
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
