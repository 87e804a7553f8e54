"""make bench-ota: the bytes a unit on release v1 receives to get v2, a release that changes
gridedge alone: the full bundle, our delta, and a casync chunk fetch of the same change.

Method, all on real artefacts:

1. v1 is the CI image's own root file system (output/ci-image/rootfs.ext4, 'make ci-image').
   v2 is a copy of it in which a release of gridedge alone was installed the way the image
   build installs it: several of gridedge's modules under /usr/lib/python3/dist-packages
   changed (a new constant near the imports and a new helper function in the middle of each
   module: every line after them moves, as in a real fix), their .pyc files compiled again
   exactly as board/qemu-ci/build.py compiles them (unchecked-hash, the guest's path in the
   code objects; checked first: recompiling v1's unchanged sources gives v1's .pyc files byte
   for byte), and /etc/gridedge/version bumped. The files are replaced in the ext4 image with
   debugfs (tests/support/qemu_bundle.py's changed_rootfs), as a fresh build would place them.
2. Both are signed as RAUC verity bundles with the CI image's test key (Debian's rauc).
3. Full: v2.raucb, what a unit without a delta base downloads.
4. Our delta: the blob the cloud offers a unit on v1 (docs/updates.md, "Deltas"), made by
   the cloud's own code (gridcloud.bundles.make_delta: ``zstd -19 --long=27
   --patch-from=v1.raucb`` of v2.raucb without its dm-verity hash tree, i.e. of ``squashfs |
   CMS | size``). It is applied back here as the unit applies it (``zstd -d --patch-from``,
   then gridedge.firmware.delta.insert_tree rebuilds the tree from the SquashFS and the
   signed salt and puts it back), and the result must be v2.raucb to the byte (sha256); the
   decoder's peak memory is reported, since a unit has 512 MiB.
   The old format is measured beside it: the patch of the whole v2.raucb, tree included. The
   tree is sha256 of every 4 KiB block, so after the first changed block of the SquashFS
   (whose later blocks all move) it is new and incompressible: it was most of that delta.
5. casync, what RAUC's casync mode would fetch: ``casync make --store=S1`` of rootfs-v1.ext4
   and ``--store=S2`` of rootfs-v2.ext4 (casync's defaults: 64 KiB average chunks, zstd).
   A unit seeds from its running slot (v1), so it fetches only the v2 chunks that v1 lacks:
   their compressed size in the store, plus the v2 index (.caibx), which a casync bundle
   carries. The bundle's signature and manifest around the index are not counted (a few KiB:
   in casync's favour).

Prints a table, then one JSON object as the very last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from gridcloud import bundles  # noqa: E402
from gridedge.firmware.delta import insert_tree  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from support.qemu_bundle import SigningKeys, changed_rootfs, start_bundle  # noqa: E402

SITE = "/usr/lib/python3/dist-packages"
#: The modules the v2 release changes: the ones a fix of the uplink or the journal touches.
CHANGED_MODULES = (
    "gridedge/journal.py",
    "gridedge/config.py",
    "gridedge/health.py",
    "gridedge/services.py",
    "gridedge/uplink/service.py",
    "gridedge/uplink/link.py",
)
#: Targets of the issue: the delta at most this share of the full bundle (and <= casync).
DELTA_TARGET = 0.05
#: The cloud's delta settings; the unit applies a delta with the same window (--long).
ZSTD_DELTA = ("zstd", "-q", *bundles.ZSTD_DELTA)


@dataclass(frozen=True)
class Release:
    version: str
    rootfs: Path
    bundle: Path


def read_ext4(image: Path, path: str) -> bytes:
    """The content of ``path`` in the ext4 ``image`` (debugfs, no mount, no root)."""
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                         check=True)
    return out.stdout


def pyc_path(module: str) -> str:
    folder, name = module.rsplit("/", 1)
    tag = sys.implementation.cache_tag
    return f"{SITE}/{folder}/__pycache__/{name.removesuffix('.py')}.{tag}.pyc"


def compile_pyc(source: bytes, guest_path: str, work: Path) -> bytes:
    """The .pyc board/qemu-ci/build.py writes for ``source`` installed at ``guest_path``."""
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "module.py", work / "module.pyc"
    src.write_bytes(source)
    py_compile.compile(str(src), str(out), dfile=guest_path, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return out.read_bytes()


def changed_module(source: str, module: str, version: str) -> str:
    """``source`` with a release's change: a constant after the imports and a helper function
    before the middle top-level definition."""
    lines = source.splitlines(keepends=True)
    name = module.removesuffix(".py").replace("/", "_")
    future = next(i for i, line in enumerate(lines) if line.startswith("from __future__"))
    constant = [
        "\n",
        f"#: Release {version}: the retry budget of this module after the field report.\n",
        f"_{name.upper()}_RETRY_BUDGET = (3, 0.5, 30.0)\n",
    ]
    tops = [i for i, line in enumerate(lines) if re.match(r"(async def|def|class) ", line)]
    middle = tops[len(tops) // 2]
    helper = [
        f"def _{name}_backoff(attempt: int, budget: tuple[int, float, float] = "
        f"_{name.upper()}_RETRY_BUDGET) -> float:\n",
        '    """Seconds before retry ``attempt``: doubling from the budget\'s first delay,\n'
        '    capped; past the budget\'s attempts the cap (release ' + version + ')."""\n',
        "    tries, first, cap = budget\n",
        "    if attempt >= tries:\n",
        "        return cap\n",
        "    return float(min(cap, first * (2 ** attempt)))\n",
        "\n",
        "\n",
    ]
    out = lines[: future + 1] + constant + lines[future + 1 : middle] + helper + lines[middle:]
    return "".join(out)


def gridedge_release(v1_rootfs: Path, dest: Path, version: str, work: Path
                     ) -> tuple[Path, dict[str, int]]:
    """rootfs.ext4 of v2: v1's with CHANGED_MODULES (sources and .pyc) and the version file
    replaced. Returns the image and {guest path: new size}."""
    files: dict[str, tuple[bytes, int]] = {}
    for module in CHANGED_MODULES:
        guest = f"{SITE}/{module}"
        old = read_ext4(v1_rootfs, guest)
        old_pyc = read_ext4(v1_rootfs, pyc_path(module))
        if not old or not old_pyc:
            raise SystemExit(f"{guest} or its .pyc is not in {v1_rootfs}")
        if compile_pyc(old, guest, work) != old_pyc:
            raise SystemExit(f"recompiling v1's {guest} does not give the image's .pyc: "
                             "this bench's compiler differs from build.py's")
        new = changed_module(old.decode(), module, version).encode()
        files[guest] = (new, 0o644)
        files[pyc_path(module)] = (compile_pyc(new, guest, work), 0o644)
    files["/etc/gridedge/version"] = (f"{version}\n".encode(), 0o644)
    changed_rootfs(v1_rootfs, dest, files)
    return dest, {path: len(content) for path, (content, _) in files.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def run_measured(argv: list[str]) -> tuple[float, int]:
    """Run ``argv``; (wall seconds, peak RSS in KiB) of that child alone. Its stderr (zstd's
    advice on patch sizes) is shown only when it fails."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{argv[0]} exited {proc.returncode}: {' '.join(argv)}\n"
                             f"{stderr.read().decode(errors='replace')}")
    return time.monotonic() - start, int(usage.ru_maxrss)


def contract_delta(base: Path, target: Path, out: Path) -> None:
    """The old format's command line: the whole target (gridcloud.bundles.ZSTD_DELTA)."""
    run_measured([*ZSTD_DELTA, f"--patch-from={base}", str(target), "-o", str(out), "-f"])


def cloud_delta(base: Path, target: Path, out: Path) -> None:
    """The cloud's own delta maker, gridcloud.bundles.make_delta, on a reactor of its own
    (called once: a reactor does not restart)."""
    from twisted.internet import defer, reactor

    outcome: list[object] = []

    def done(result: object) -> None:
        outcome.append(result)
        reactor.stop()

    def go() -> None:
        made = defer.ensureDeferred(bundles.make_delta(reactor, base, target, out))
        made.addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run()
    if not outcome or isinstance(outcome[0], Failure):
        raise SystemExit(f"gridcloud.bundles.make_delta failed: {outcome}")


@dataclass(frozen=True)
class Delta:
    size: int
    maker: str
    make_seconds: float
    apply_seconds: float
    tree_seconds: float
    apply_peak_kib: int
    rebuilds_full: bool


def measure_delta(v1: Path, v2: Path, work: Path) -> Delta:
    maker = (f"gridcloud.bundles.make_delta (tree cut, zstd {' '.join(bundles.ZSTD_DELTA)} "
             "--patch-from)")
    blob, rebuilt = work / "v1-to-v2.delta", work / "v2-rebuilt.raucb"
    start = time.monotonic()
    cloud_delta(v1, v2, blob)
    made = time.monotonic() - start
    applied, peak = run_measured(["zstd", "-q", "-d", "--long=27", f"--patch-from={v1}",
                                  str(blob), "-o", str(rebuilt), "-f"])
    start = time.monotonic()
    for _ in insert_tree(rebuilt):
        pass
    tree_seconds = time.monotonic() - start
    same = sha256(rebuilt) == sha256(v2)
    rebuilt.unlink()
    return Delta(blob.stat().st_size, maker, made, applied, tree_seconds, peak, same)


def measure_old_format(v1: Path, v2: Path, work: Path) -> int:
    """The size of the old format: the patch of the whole v2.raucb, hash tree included."""
    blob = work / "v1-to-v2.with-tree.delta"
    contract_delta(v1, v2, blob)
    return blob.stat().st_size


@dataclass(frozen=True)
class Casync:
    size: int
    new_chunks: int
    chunks: int
    new_chunk_bytes: int
    index_bytes: int
    store_bytes: int


def measure_casync(v1_rootfs: Path, v2_rootfs: Path, work: Path) -> Casync:
    s1, s2 = work / "store-v1", work / "store-v2"
    for store, name, image in ((s1, "v1.caibx", v1_rootfs), (s2, "v2.caibx", v2_rootfs)):
        subprocess.run(["casync", "make", f"--store={store}", str(work / name), str(image)],
                       check=True, stdout=subprocess.DEVNULL)
    have = {p.name for p in s1.rglob("*.cacnk")}
    v2_chunks = {p.name: p.stat().st_size for p in s2.rglob("*.cacnk")}
    new = {name: size for name, size in v2_chunks.items() if name not in have}
    index = (work / "v2.caibx").stat().st_size
    return Casync(sum(new.values()) + index, len(new), len(v2_chunks), sum(new.values()),
                  index, sum(v2_chunks.values()))


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:6.2f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=ROOT / "output" / "ci-image",
                        help="the CI image's output folder (make ci-image)")
    parser.add_argument("--work", type=Path, help="keep the bundles and stores here")
    args = parser.parse_args()
    for tool in ("rauc", "zstd", "casync", "debugfs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: 'make setup' installs it (mk/qemu.mk)")
    v1_rootfs = args.image / "rootfs.ext4"
    if not v1_rootfs.exists():
        raise SystemExit(f"{v1_rootfs} is missing: run 'make ci-image'")
    keys = SigningKeys.in_folder(args.image / "test-keys")
    v1_version = (args.image / "rootfs/etc/gridedge/version").read_text().strip()
    v2_version = f"{v1_version}+gridedge.2"

    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"v1: {v1_version} (the CI image's root); v2: {v2_version}", file=sys.stderr)
        v2_rootfs, changed = gridedge_release(v1_rootfs, work / "rootfs-v2.ext4", v2_version,
                                              work / "pyc")
        jobs = [start_bundle(work / "bundles" / "v1.raucb", v1_rootfs, keys, version=v1_version),
                start_bundle(work / "bundles" / "v2.raucb", v2_rootfs, keys, version=v2_version)]
        print("signing both bundles (rauc bundle) and chunking both roots (casync)...",
              file=sys.stderr)
        casync = measure_casync(v1_rootfs, v2_rootfs, work)
        v1, v2 = (job.path() for job in jobs)
        full = v2.stat().st_size
        print("making and applying the delta...", file=sys.stderr)
        delta = measure_delta(v1, v2, work)
        old_format = measure_old_format(v1, v2, work)

    source_bytes = sum(size for path, size in changed.items() if path.endswith(".py"))
    pyc_bytes = sum(size for path, size in changed.items() if path.endswith(".pyc"))
    delta_ok = delta.size <= DELTA_TARGET * full
    beats_casync = delta.size <= casync.size
    print(f"\nOTA bytes: a unit on v1 gets v2, which changes gridedge alone "
          f"({len(CHANGED_MODULES)} modules: {source_bytes:,} B of source, {pyc_bytes:,} B of "
          f".pyc, and the version file)")
    print(f"{'what is sent':<44}{'bytes':>14}{'of full':>10}")
    print(f"{'full bundle (v2.raucb, verity)':<44}{full:>14,}{pct(full, full):>10}")
    print(f"{'our delta (make_delta: tree cut, patched)':<44}{delta.size:>14,}"
          f"{pct(delta.size, full):>10}")
    print(f"{'  old format: whole bundle, tree included':<44}{old_format:>14,}"
          f"{pct(old_format, full):>10}")
    print(f"{'casync chunk fetch, seeded from the v1 slot':<44}{casync.size:>14,}"
          f"{pct(casync.size, full):>10}")
    print(f"  casync: {casync.new_chunks} of {casync.chunks} chunks new "
          f"({casync.new_chunk_bytes:,} B compressed) + v2 index {casync.index_bytes:,} B; "
          f"the whole v2 store is {casync.store_bytes:,} B")
    print(f"  delta: made by {delta.maker} in {delta.make_seconds:.1f} s; applied on this host "
          f"in {delta.apply_seconds:.1f} s (zstd, peak RSS {delta.apply_peak_kib / 1024:.0f} "
          f"MiB) + {delta.tree_seconds:.1f} s (hash tree rebuilt and put back); rebuilt bundle "
          f"{'==' if delta.rebuilds_full else '!='} v2.raucb (sha256)")
    print(f"  old format: {old_format / casync.size:.2f}x casync; the hash tree cut saves "
          f"{old_format - delta.size:,} B")
    print(f"  targets: delta <= {DELTA_TARGET:.0%} of full: {'met' if delta_ok else 'NOT met'}; "
          f"delta <= casync: {'met' if beats_casync else 'NOT met'} "
          f"(delta is {delta.size / casync.size:.2f}x casync)")
    print(json.dumps({
        "bench": "ota",
        "v1": v1_version,
        "v2": v2_version,
        "changed_files": len(changed),
        "full_bytes": full,
        "delta_bytes": delta.size,
        "delta_ratio": round(delta.size / full, 5),
        "old_format_delta_bytes": old_format,
        "old_format_delta_ratio": round(old_format / full, 5),
        "casync_bytes": casync.size,
        "casync_ratio": round(casync.size / full, 5),
        "casync_new_chunks": casync.new_chunks,
        "casync_chunks": casync.chunks,
        "casync_index_bytes": casync.index_bytes,
        "delta_maker": delta.maker,
        "delta_make_s": round(delta.make_seconds, 1),
        "delta_apply_s": round(delta.apply_seconds, 1),
        "delta_tree_s": round(delta.tree_seconds, 1),
        "delta_apply_peak_kib": delta.apply_peak_kib,
        "delta_rebuilds_full": delta.rebuilds_full,
        "target_delta_le_5pct": delta_ok,
        "target_delta_le_casync": beats_casync,
    }))
    return 0 if delta.rebuilds_full else 1


if __name__ == "__main__":
    sys.exit(main())
