"""What checking snapshot signatures costs: per verification, per load, and in loop stall.

Side by side in one run, on the same built snapshot: a watcher swapping versions without a
verifier and with one (``[snapshot] public_key``), each swap timed, and the event loop's
longest stall measured by a 1 ms ticker while it happens; plus the raw Ed25519 sign and
verify times of the manifest.

    python -m benchmarks.signing_bench [--consents 200000] [--swaps 5]
    make bench-signing

Writes benchmarks/results/signing.json and signing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.snapshot_bench import generate
from filterd.snapshot import SnapshotWatcher, build_snapshot
from filterd.snapshot import format as fmt
from filterd.snapshot.signing import Verifier, generate_keypair, read_private_key

RESULTS = Path(__file__).resolve().parent / "results"


def _per_call_us(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


async def _swaps(root: Path, versions: list[str], verifier: Verifier | None) -> dict[str, float]:
    """Swap through ``versions`` with a watcher; the loop's longest stall and swap times."""
    watcher = SnapshotWatcher(root, 3600, verifier=verifier)
    lateness: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lateness.append(max(0.0, time.perf_counter() - due))

    tick = asyncio.create_task(ticker())
    swap_s: list[float] = []
    try:
        for version in versions:
            fmt.publish_pointer(root, version)
            started = time.perf_counter()
            await watcher.check()
            swap_s.append(time.perf_counter() - started)
            assert watcher.current is not None
            assert watcher.current.version == version, "swap refused"
            await watcher.release_retired()
    finally:
        running = False
        await tick
        gc.unfreeze()
    return {
        "swap_s_median": statistics.median(swap_s),
        "stall_ms_max": max(lateness) * 1e3,
        "stall_ms_p99": sorted(lateness)[int(len(lateness) * 0.99)] * 1e3,
    }


def run(consents: int, swaps: int, workdir: Path) -> dict[str, object]:
    inputs = generate(workdir, consents)
    key, pub = generate_keypair(workdir / "keys")
    root = workdir / "root"
    versions = []
    for _ in range(swaps):
        # Signed with the key: the run without a verifier simply ignores the signature.
        versions.append(build_snapshot(root, inputs["consents"], inputs["optouts"],
                                       inputs["dnd"], keep=swaps + 1, sign_key=key))  # fmt: skip
        time.sleep(1.01)  # distinct, increasing version names
    manifest = (root / versions[-1] / fmt.MANIFEST).read_bytes()
    private = read_private_key(key)
    signature = private.sign(manifest)
    verifier = Verifier(pub)
    public = private.public_key()
    n = 2000
    sign_us = _per_call_us(lambda: private.sign(manifest), n)
    verify_us = _per_call_us(lambda: public.verify(signature, manifest), n)
    check_us = _per_call_us(lambda: verifier.verify(root / versions[-1], versions[-1], manifest), n)
    # Alternate the two variants so drift of the machine hits both alike.
    plain: list[dict[str, float]] = []
    signed: list[dict[str, float]] = []
    for rep in range(2):
        order = [(None, plain), (verifier, signed)]
        for v, sink in order if rep % 2 == 0 else reversed(order):
            sink.append(asyncio.run(_swaps(root, versions, v)))

    def best(runs: list[dict[str, float]]) -> dict[str, float]:
        return {k: min(r[k] for r in runs) for k in runs[0]}

    return {
        "consents": consents,
        "swaps": swaps,
        "manifest_bytes": len(manifest),
        "ed25519_sign_us": sign_us,
        "ed25519_verify_us": verify_us,
        "signature_check_us": check_us,
        "without_verifier": best(plain),
        "with_verifier": best(signed),
    }


def table(r: dict[str, object]) -> str:
    plain, signed = r["without_verifier"], r["with_verifier"]
    assert isinstance(plain, dict)
    assert isinstance(signed, dict)
    lines = [
        f"# Snapshot signatures: cost ({r['consents']:,} consents, {r['swaps']} swaps)",
        "",
        f"Manifest {r['manifest_bytes']:,} B: Ed25519 sign {r['ed25519_sign_us']:.0f} µs, "
        f"verify {r['ed25519_verify_us']:.0f} µs; filterd's whole check "
        f"(read manifest.sig, parse, verify) {r['signature_check_us']:.0f} µs.",
        "",
        "| | swap (median) | loop stall max | loop stall p99 |",
        "|---|---:|---:|---:|",
    ]
    for name, row in (("without public_key", plain), ("with public_key", signed)):
        lines.append(
            f"| {name} | {row['swap_s_median'] * 1e3:.0f} ms | {row['stall_ms_max']:.1f} ms "
            f"| {row['stall_ms_p99']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consents", type=int, default=200_000)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "signing.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="filterd-signbench-") as tmp:
        result = run(args.consents, args.swaps, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
