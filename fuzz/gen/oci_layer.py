#!/usr/bin/env python3
"""Writes the seed corpus of the `oci_layer` fuzz target (fuzz/corpus/oci_layer/).

Small valid layers (plain, gzip, zstd) and hostile ones: `..` traversal, absolute paths,
symlinks out of the root then writes through them, hardlinks out, whiteouts of `..`, opaque
directories, bombs (gzip, zstd, sparse) that are small on disk, too many entries.
Needs python3, gzip, zstd and GNU tar. Run from anywhere; output is deterministic.
"""
import gzip
import io
import os
import subprocess
import sys
import tarfile
import tempfile

# No padding to 10 KiB records: the two end blocks only, so seeds stay small.
tarfile.RECORDSIZE = tarfile.BLOCKSIZE

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "oci_layer")


def info(name, kind=tarfile.REGTYPE, data=b"", link="", mode=None, **kw):
    t = tarfile.TarInfo(name)
    t.type = kind
    t.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    t.linkname = link
    t.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    t.mtime = 1_700_000_000
    for k, v in kw.items():
        setattr(t, k, v)
    return t, data


def layer(entries, fmt=tarfile.GNU_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as tf:
        for t, data in entries:
            tf.addfile(t, io.BytesIO(data) if t.size else None)
    return b.getvalue()


def gz(data):
    return gzip.compress(data, 9, mtime=0)


def zst(data):
    return subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


D, F, S, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def seeds():
    valid = layer([
        info("./", D),
        info("etc/", D),
        info("etc/hostname", F, b"box\n"),
        info("usr/local/bin/", D),
        info("usr/local/bin/tool", F, b"#!/bin/sh\necho hi\n", mode=0o4755, uid=1000, gid=1000),
        info("sbin", S, link="usr/sbin"),
        info("usr/local/bin/tool2", H, link="usr/local/bin/tool"),
        info("dev/", D),
        info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        info("run/fifo", tarfile.FIFOTYPE),
    ])
    pax = layer([
        info("bin/ping", F, b"\x7fELF", pax_headers={"SCHILY.xattr.security.capability":
                                                      "\x01\x00\x00\x02"}),
        info("a/" + "long/" * 40 + "name", F, b"x"),
        info("link-with-long-target", S, link="../" * 60 + "etc/passwd"),
    ], fmt=tarfile.PAX_FORMAT)
    yield "valid.tar", valid
    yield "valid.tar.gz", gz(valid)
    yield "valid.tar.zst", zst(valid)
    yield "pax_xattr_long.tar", pax
    yield "traversal.tar", layer([
        info("../evil", F, b"x"),
        info("a/../../evil2", F, b"x"),
        info("/abs/file", F, b"stays inside"),
        info("./././dot", F, b"x"),
        info("//double//slash", F, b"x"),
    ])
    yield "symlink_escape.tar", layer([
        info("esc", S, link="/tmp/outside"),
        info("esc/pwned", F, b"x"),
        info("up2", S, link="../../../../.."),
        info("up2/pwned", F, b"y"),
        info("up/pwned3", F, b"z"),  # base symlink `up -> ../../..`
        info("lib/x", F, b"via the absolute base symlink"),
        info("loop", S, link="loop"),
        info("loop/x", F, b"x"),
        info("esc2", S, link="."),
        info("esc2/esc2/esc2/f", F, b"x"),
    ])
    yield "hardlink_outside.tar", layer([
        info("h1", H, link="../../etc/passwd"),
        info("h2", H, link="/etc/passwd"),
        info("h3", H, link="up/etc/passwd"),
        info("h4", H, link="usr"),
        info("h5", H, link="bin/sh"),
        info("h6", H, link="missing/file"),
        info("h7", H, link="/"),
    ])
    yield "whiteout_dotdot.tar", layer([
        info(".wh...", F),
        info("d/.wh...", F),
        info(".wh.", F),
        info(".wh..", F),
        info("up/.wh.etc", F),
        info("lib/.wh..wh..opq", F),
        info("bin/.wh.sh", F),
        info("nowhere/.wh.x", F),
    ])
    yield "opaque.tar", layer([
        info("d/", D),
        info("d/new", F, b"n"),
        info("d/.wh..wh..opq", F),
        info(".wh.etc", F),
        info("usr/.wh..wh..opq", F),
        info(".wh..wh..opq", F),
    ])
    yield "replace.tar", layer([
        info("etc", F, b"a file over a directory"),
        info("bin/", D),
        info("bin/sh", F, b"dir over a symlink"),
        info("d", S, link="/"),
        info("d/x", F, b"x"),
        info("var/run/", D),
    ])
    bomb = layer([info("zeros", F, bytes(4 << 20))])  # 4x the harness limit
    yield "gzip_bomb.tar.gz", gz(bomb)
    yield "zstd_bomb.tar.zst", zst(bomb)
    yield "gzip_multi_member.tar.gz", gz(valid[:1024]) + gz(valid[1024:])
    yield "many_entries.tar.gz", gz(layer([info(f"f{i}", F) for i in range(300)]))
    yield "deep.tar", layer([info("x/" * 300 + "f", F, b"x")], fmt=tarfile.PAX_FORMAT)
    yield "truncated.tar", valid[:700]
    yield "truncated.tar.gz", gz(valid)[:200]
    yield "not_a_tar", b"this is not a tar archive at all\n" * 20
    yield "empty", b""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "sparse"), "wb") as f:
            f.truncate(64 << 20)
            f.write(b"end")
        out = subprocess.run(["tar", "--sparse", "--format=gnu", "--owner=0", "--group=0",
                              "--mtime=@0", "-C", d, "-cf", "-", "sparse"],
                             capture_output=True, check=True).stdout
        yield "sparse_bomb.tar", out[:out.index(b"end") + 512] + bytes(1024)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in seeds():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
