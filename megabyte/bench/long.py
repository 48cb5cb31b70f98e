"""Long sequences: one training step of a three-stage MEGABYTE on a 1 MiB sequence, and the longest
sequence at which the same-size byte Transformer can still take a step on the same machine.

MEGABYTE (patch sizes 16 and 8: 1,048,576 bytes are 8,192 global patches of 128 bytes, each
16 sub-patches of 8 bytes) runs with activation checkpointing in every stage, bf16 autocast and a
projected global byte embedding (`embed_dims`: 128 bytes x 8 wide, projected to 512, instead of
512 / 128 = 4 numbers per byte). The Transformer (512 x 8, flash attention, bf16, no
checkpointing: how it is trained) tries 8,192 bytes, then doubles until a step fails.

Every step runs in its own process under an address-space cap (`--mem-limit-gb`, lowered to what
the machine has free at that moment), so a failure is an out-of-memory error, not a swapping
machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LongOptions:
    megabyte_bytes: int = 1_048_576
    transformer_start: int = 8192
    transformer_max: int = 1_048_576
    quick: bool = False
    threads: int = 2
    mem_limit_gb: float = 16.0
    device: str = "cpu"
    dtype: str = "bf16"
    checkpointing: bool = True
    timeout_s: float = 3600.0


def available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_long(opts: LongOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    from megabyte.bench.harness import run_worker, worker_env
    from megabyte.training.runtime import machine

    env = worker_env(opts.threads)

    def step(kind: str, T: int, checkpointing: bool) -> dict[str, Any]:
        cap = opts.mem_limit_gb
        free = available_gib()
        if free is not None and opts.device == "cpu":
            cap = max(1.0, min(cap, free - 1.0))  # never ask for more than the machine has free now
        spec = {"task": "long", "kind": kind, "seq_len": T, "checkpointing": checkpointing, "quick": opts.quick,
                "threads": opts.threads, "device": opts.device, "dtype": opts.dtype, "mem_limit_gb": cap}
        log(f"  {kind} @ {T:,} bytes (memory cap {cap:.1f} GiB) ...")
        r = run_worker(spec, timeout_s=opts.timeout_s, env=env)
        r["seq_len"], r["mem_cap_gib"] = T, cap
        log(f"  {kind} @ {T:,}: " + (f"error: {r['error']}" if "error" in r else
                                       f"{r['seconds']:.1f} s, peak {r['peak_memory'] / 2**30:.2f} GiB"))
        return r

    results: dict[str, Any] = {"options": asdict(opts), "machine": machine()}
    T = opts.megabyte_bytes if not opts.quick else min(opts.megabyte_bytes, 4096)
    results["megabyte"] = step("megabyte", T, opts.checkpointing)
    tries = []
    T = opts.transformer_start if not opts.quick else 256
    limit = opts.transformer_max if not opts.quick else 1024
    while T <= limit:
        r = step("transformer", T, False)
        tries.append(r)
        if "error" in r:
            break
        T *= 2
    results["transformer"] = tries
    ok = [r for r in tries if "error" not in r]
    results["transformer_longest"] = ok[-1]["seq_len"] if ok else None
    results["transformer_stopped_by"] = stopped_by(tries[-1] if tries else {})
    return results


def stopped_by(last: dict[str, Any]) -> str:
    """Why the doubling search ended: "limit" (the longest asked for ran), "out of memory" (the
    longest that fits was found), or "error": a failure that says nothing about memory (a bug, a
    timeout), so the longest sequence that ran is not the machine's limit."""
    if "error" not in last:
        return "limit"
    return "out of memory" if last.get("oom") else "error"


def render_long(results: dict[str, Any]) -> str:
    lines = ["| model | params | sequence (bytes) | step time | peak memory | result |", "|---|---|---|---|---|---|"]

    def line(name: str, r: dict[str, Any]) -> str:
        if "error" in r:
            return f"| {name} | - | {r['seq_len']:,} | - | - | {r['error']} (cap {r['mem_cap_gib']:.1f} GiB) |"
        return (f"| {name} | {r['params'] / 1e6:.1f}M | {r['seq_len']:,} | {r['seconds']:.1f} s | "
                f"{r['peak_memory'] / 2**30:.2f} GiB | ok |")

    ck = " (checkpointed)" if results["options"]["checkpointing"] else ""
    lines.append(line(f"MEGABYTE 3-stage{ck}", results["megabyte"]))
    for r in results["transformer"]:
        lines.append(line("Transformer", r))
    longest = results["transformer_longest"]
    if results["transformer"]:
        lines.append("")
        why = results.get("transformer_stopped_by")
        last = results["transformer"][-1]
        note = {"limit": " (the search limit)",
                "out of memory": f" (out of memory at {last['seq_len']:,})",
                "error": f" (the search stopped at {last['seq_len']:,} on an error that is not out of memory: "
                         f"{last.get('error')}; this is not the machine's limit)"}.get(why, "")
        lines.append(f"Longest Transformer step: {longest:,} bytes{note}." if longest
                     else f"The Transformer took no step{note}.")
    return "\n".join(lines)
