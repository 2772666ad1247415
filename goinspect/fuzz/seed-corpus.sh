#!/usr/bin/env bash
# Write small seed corpora into goinspect/fuzz/corpus/<target>/ (not committed) from the fixtures.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
FIX="${CHAINPROBE_FIXTURES:-$HERE/../../target/go-fixtures}"
mkdir -p "$HERE/corpus/buildinfo" "$HERE/corpus/pclntab" "$HERE/corpus/elf_inspect"
python3 - "$FIX" "$HERE/corpus" <<'PY'
import glob, os, struct, sys
fix, out = sys.argv[1], sys.argv[2]
def sections(data):
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3a)
    hdrs = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize) for i in range(shnum)]
    stro = hdrs[shstrndx][4]
    res = {}
    for h in hdrs:
        n = data[stro + h[0]: data.index(b'\0', stro + h[0])].decode()
        res[n] = (h[4], h[5])
    return res
for i, p in enumerate(sorted(glob.glob(f'{fix}/*/*stripped/hello'))):
    d = open(p, 'rb').read()
    s = sections(d)
    if '.go.buildinfo' in s:
        o, n = s['.go.buildinfo']
        open(f'{out}/buildinfo/seed{i}', 'wb').write(d[o:o + min(n, 2048)])
# synthetic 1.20 pclntab (same shape as the unit-test builder)
def synth(funcs, end):
    names = b''; offs = []
    for _, n, _ in funcs:
        offs.append(len(names)); names += n.encode() + b'\0'
    fo = 72; po = fo + ((len(names) + 7) // 8) * 8; fl = (len(funcs) + 1) * 8
    d = struct.pack('<I4B', 0xfffffff1, 0, 0, 1, 8)
    d += struct.pack('<8Q', len(funcs), 0, 0x401000, fo, 0, 0, 0, po)
    d += names; d += b'\0' * (po - len(d))
    for i, (e, _, _) in enumerate(funcs): d += struct.pack('<II', e, fl + i * 48)
    d += struct.pack('<II', end, 0)
    for i, (e, _, fid) in enumerate(funcs):
        f = bytearray(48); struct.pack_into('<Ii', f, 0, e, offs[i]); f[40] = fid; d += bytes(f)
    return d
open(f'{out}/pclntab/synth0', 'wb').write(synth([(0, 'runtime.gcStart', 0), (0x40, 'runtime.goexit1', 21), (0x80, 'runtime.goexit1', 0)], 0x100))
open(f'{out}/elf_inspect/empty-patch', 'wb').write(b'\0\0\0\0')
PY
echo "seeds in $HERE/corpus" >&2
