#!/usr/bin/env python3
"""Counts a library crate's public items, roughly and reproducibly, for the API review.

For each crate: the top-level `pub` items (fn, struct, enum, trait, const, static, type; methods
and fields not counted) of the modules a user can reach (a `pub mod` from the root, or the root
itself), and the paths that the root's `pub use` re-exports add (an item reachable both in its
`pub mod` and at the root counts twice: that is what a curated API removes). A `#[cfg(test)] mod tests { .. }` is skipped. Usage:
    scripts/public-api.py [CRATE_DIR...]   (default: the library crates)
"""
import os, re, sys

DECL = re.compile(r'^pub (?:async |const |unsafe )*(fn|struct|enum|trait|const|static|type) ([A-Za-z_][A-Za-z0-9_]*)')
MOD = re.compile(r'^\s*pub mod ([a-z_0-9]+)\s*;', re.M)
PRIVMOD = re.compile(r'^\s*(?:pub\(crate\) )?mod ([a-z_0-9]+)\s*;')
USE = re.compile(r'^\s*pub use ([^;]+);', re.S | re.M)

def body(path):
    text = open(path).read()
    m = re.search(r'#\[cfg\(test\)\]\s*mod tests\s*\{', text)
    return text if not m else text[:m.start()]

def module_file(src, parts):
    base = os.path.join(src, *parts)
    for p in (base + '.rs', os.path.join(base, 'mod.rs')):
        if os.path.exists(p):
            return p
    return None

def walk(src, parts, path, public, out):
    text = body(path)
    for line in text.splitlines():
        m = DECL.match(line)
        if m and public:
            out.append('::'.join(parts + [m.group(2)]))
    for m in MOD.finditer(text):
        f = module_file(src, parts + [m.group(1)])
        if f: walk(src, parts + [m.group(1)], f, public, out)
    for line in text.splitlines():
        m = PRIVMOD.match(line)
        if m and not line.strip().startswith('pub mod'):
            f = module_file(src, parts + [m.group(1)])
            if f: walk(src, parts + [m.group(1)], f, False, out)

def reexports(lib):
    names = []
    for m in USE.finditer(body(lib)):
        spec = m.group(1)
        if '{' in spec:
            inner = spec[spec.index('{') + 1:spec.rindex('}')]
            names += [n.strip() for n in re.split(r',(?![^{]*\})', inner) if n.strip()]
        else:
            names.append(spec.strip())
    return names

def main():
    crates = sys.argv[1:] or ['wormhole-core', 'wormhole-linux', 'wormhole-k8s', 'wormhole-agent']
    for crate in crates:
        src = os.path.join(crate, 'src')
        lib = os.path.join(src, 'lib.rs')
        if not os.path.exists(lib):
            continue
        items = []
        walk(src, [], lib, True, items)
        uses = reexports(lib)
        mods = len(MOD.findall(body(lib)))
        print(f'{crate}: {mods} pub mod(s), {len(items)} pub item(s) in reachable modules, '
              f'{len(uses)} root re-export(s) -> {len(items) + len(uses)} path(s)')

main()
