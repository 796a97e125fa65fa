"""Redis's own time per script call, warm, for an older revision and this checkout, in one run, alternated.

    .venv/bin/python measure/redis_cost.py REV [--rounds 5] [--count 20000] [--json PATH]

Starts a Redis of its own (redis.conf, AOF on; a temporary directory, a free loopback port)
and makes a `git worktree` of REV in a temporary directory. Each round runs a child process
per build, REV's first (PYTHONPATH: the worktree) then this checkout's working tree, each in
a namespace of its own that is deleted after. A child runs, each after one unmeasured batch
(warm: scripts loaded, code paths run once), an AOF rewrite waited for (so no automatic one,
a fork, overlaps it) and CONFIG RESETSTAT, through the build's own Store and MegadealGate:

  allocate   COUNT STANDARD allocations to new users, 100 at once (asyncio.gather: they reach
             Redis as auto-pipelines of 100), from 50 coupons of 10,000,000 usages
  redeem     the redemption of each of those allocations, 100 at once
  upload     COUNT new single-usage coupons in one Store.upload (chunks of UPLOAD_CHUNK_SIZE,
             100 by default): per call and per coupon
  megadeal   COUNT/10 MEGADEAL allocations to new users, 100 at once, through the gate's slot
             with limits nobody waits under: the enter script's calls (all 100 hold their
             slot) and the leave script's (all leave) are told apart by reading the
             statistics between them

The figure is the script command's usec/calls in INFO commandstats (usec_per_call, not
rounded): Redis's time in the script, the commands it calls included, without the network,
the client or the AOF's write. It reads EVALSHA's or FCALL's statistics, whichever has
calls, and says which. Prints, per scenario and build, the median over the rounds and the
min-max, and new/old; --json writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AT_ONCE = 100  # operations sent together: one auto-pipeline
STANDARD_COUPONS = 50
MEGADEAL_COUPONS = 10
MANY_USAGES = 10_000_000
# The commands a script call can show under: redis-py's Script calls EVALSHA (EVAL after a
# NOSCRIPT); Redis Functions are called by FCALL.
SCRIPT_COMMANDS = ("evalsha", "fcall", "eval", "evalsha_ro", "fcall_ro", "eval_ro")
# Table rows: (label, scenario key in a child's result)
ROWS = (
    ("allocate", "allocate"),
    ("redeem", "redeem"),
    ("upload, per call", "upload"),
    ("upload, per coupon", "upload_per_coupon"),
    ("megadeal enter", "megadeal_enter"),
    ("megadeal leave", "megadeal_leave"),
)


# =====================================================================================================
# THE BUILD'S API. Everything that depends on coupon_pool's Python API is in this section: the
# imports, building the store and the gate, loading their scripts, and the four operations. When
# the package's modules or signatures change, adapt this section, and only this one.
# =====================================================================================================


@dataclass
class Build:
    source: str  # the file coupon_pool was imported from (checked against the build's tree)
    redis: Redis  # the store's client; also used here for INFO, CONFIG RESETSTAT and the cleanup
    # Uploads (code, type name, max usages) in one call of the store; how many were created.
    upload: Callable[[Sequence[tuple[str, str, int]]], Awaitable[int]]
    allocate: Callable[[str], Awaitable[str]]  # a STANDARD allocation to a user: its code
    redeem: Callable[[str, str], Awaitable[None]]  # code, user
    # A MEGADEAL allocation to a user through the gate, holding its slot inside; leaving on exit.
    megadeal_slot: Callable[[str], AbstractAsyncContextManager[Any]]
    close: Callable[[], Awaitable[None]]


async def open_build(redis_url: str, namespace: str) -> Build:
    import coupon_pool
    from coupon_pool.models import CouponIn, CouponType, FlatDiscount
    from coupon_pool.settings import Settings

    try:  # the layout by folders (coupon_pool/pool/), functions library
        from coupon_pool.pool.megadeal import MegadealGate
        from coupon_pool.pool.store import Store

        by_folders = True
    except ImportError:  # before it (f3449c6 and earlier): flat modules, EVALSHA scripts
        from coupon_pool.megadeal import MegadealGate  # type: ignore[no-redef]
        from coupon_pool.store import Store  # type: ignore[no-redef]

        by_folders = False

    # MEGADEAL limits nobody waits under (a batch of AT_ONCE holds its slots together; the
    # megadeal scenario makes COUNT/10 admissions, so past 10,000 a second some may wait).
    settings = Settings(
        redis_url=redis_url,
        key_namespace=namespace,
        megadeal_max_concurrent=1000,  # the most the settings allow (issue 27 bounded them)
        megadeal_rate_per_s=10_000,
        megadeal_max_wait_s=60.0,
        megadeal_lease_s=60.0,
    )
    store = Store.from_settings(settings)
    if by_folders:
        await store.prepare()
        gate = MegadealGate.from_settings(settings, store.redis, store.library)
    else:
        await store.load_scripts()  # type: ignore[attr-defined]
        gate = MegadealGate.from_settings(settings, store.redis)  # type: ignore[call-arg]
    expires = datetime.now(UTC) + timedelta(days=30)
    discount = FlatDiscount.model_construct(kind="flat", value="1.50")

    async def upload(coupons: Sequence[tuple[str, str, int]]) -> int:
        made = [
            CouponIn.model_construct(
                code=code, type=CouponType(kind), discount=discount, expires_at=expires, max_usages=usages
            )
            for code, kind, usages in coupons
        ]
        return (await store.upload(made)).created

    async def allocate(user: str) -> str:
        return (await store.allocate(user, CouponType.STANDARD)).code

    async def redeem(code: str, user: str) -> None:
        await store.redeem(code, user, CouponType.STANDARD)

    async def close() -> None:
        await gate.aclose()
        await store.aclose()

    return Build(
        source=str(coupon_pool.__file__),
        redis=store.redis,
        upload=upload,
        allocate=allocate,
        redeem=redeem,
        megadeal_slot=gate.slot,
        close=close,
    )


# =====================================================================================================
# The child: the scenarios, on the build's API above and plain redis-py.
# =====================================================================================================

Calls = dict[str, tuple[int, int]]  # script command -> (calls, usec), as INFO commandstats counts them


@dataclass
class Cost:
    command: str  # the script command(s) the calls showed under: "evalsha", "fcall", or "evalsha+eval"...
    calls: int
    usec: int
    operations: int  # operations measured (allocations, redemptions, coupons uploaded...)
    usec_per_call: float
    aof_rewrite: bool  # an AOF rewrite (a fork) ran during the scenario


async def script_calls(redis: Redis) -> Calls:
    stats = await redis.info("commandstats")
    found = {name: stats.get(f"cmdstat_{name}") for name in SCRIPT_COMMANDS}
    return {name: (int(s["calls"]), int(s["usec"])) for name, s in found.items() if s}


def cost(before: Calls, after: Calls, operations: int, rewrite: bool, per: int | None = None) -> Cost:
    """The script calls between two readings; ``per``: divide the time by it, not by the calls."""
    delta = {n: (c - before.get(n, (0, 0))[0], u - before.get(n, (0, 0))[1]) for n, (c, u) in after.items()}
    used = {n: cu for n, cu in delta.items() if cu[0] > 0}
    calls = sum(c for c, _ in used.values())
    usec = sum(u for _, u in used.values())
    command = "+".join(sorted(used, key=lambda n: -used[n][0])) or "none"
    return Cost(command, calls, usec, operations, usec / (per or calls or 1), rewrite)


async def rewriting(redis: Redis) -> bool:
    p = await redis.info("persistence")
    return bool(int(p["aof_rewrite_in_progress"]) or int(p["aof_rewrite_scheduled"]))


async def rewritten(redis: Redis, within_s: float = 120.0) -> None:
    """Until no AOF rewrite runs or waits to."""
    for _ in range(int(within_s / 0.01)):
        if not await rewriting(redis):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the AOF rewrite did not end within {within_s:g} s")


async def reset(redis: Redis) -> bool:
    """Rewrite the AOF now, and wait for it; then CONFIG RESETSTAT. Whether a rewrite runs still.

    An automatic rewrite starts when the AOF has grown by 64 MB (redis.conf) since the last:
    a fork, whose copy-on-write slows every write while it runs (in a run of 5 rounds of 20,000,
    6 to 8 of the 60 measurements overlapped one, every one the old build's). Rewritten
    beforehand, the AOF starts each scenario small, and none grows by that much."""
    await rewritten(redis)
    await redis.bgrewriteaof()
    await rewritten(redis)
    await redis.config_resetstat()
    return await rewriting(redis)


async def rewrote(redis: Redis, running_before: bool) -> bool:
    """Whether an AOF rewrite ran since ``reset`` (RESETSTAT zeroes total_forks)."""
    return running_before or int((await redis.info("stats"))["total_forks"]) > 0


def batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[start : start + AT_ONCE] for start in range(0, len(items), AT_ONCE)]


async def allocate_all(build: Build, users: Sequence[str]) -> list[str]:
    codes: list[str] = []
    for batch in batches(users):
        codes += await asyncio.gather(*(build.allocate(user) for user in batch))
    return codes


async def redeem_all(build: Build, codes: Sequence[str], users: Sequence[str]) -> None:
    pairs = list(zip(codes, users, strict=True))
    for batch in batches(pairs):
        await asyncio.gather(*(build.redeem(code, user) for code, user in batch))


async def megadeal_batch(build: Build, users: Sequence[str]) -> tuple[Calls, Calls, Calls]:
    """Every user of ``users`` enters the gate and holds its slot; then all leave. The script
    statistics before, once all hold their slot, and after they left."""
    before = await script_calls(build.redis)
    all_in = asyncio.Barrier(len(users) + 1)
    go = asyncio.Event()

    async def hold(user: str) -> None:
        async with build.megadeal_slot(user):
            await all_in.wait()
            await go.wait()

    async with asyncio.TaskGroup() as group:  # a failed entry cancels the wait below, and raises
        for user in users:
            group.create_task(hold(user))
        await all_in.wait()
        inside = await script_calls(build.redis)
        go.set()
    return before, inside, await script_calls(build.redis)


BREAKDOWN: dict[str, float] = {}  # the commands an allocation's script runs: us per allocation


async def commands_per(redis: Redis, operations: int) -> dict[str, float]:
    """The commands run since CONFIG RESETSTAT, other than the script calls and the
    statistics' own: Redis's time in each, in us per operation (calls per operation too)."""
    stats = await redis.info("commandstats")
    skip = {f"cmdstat_{name}" for name in SCRIPT_COMMANDS} | {"cmdstat_info", "cmdstat_config|resetstat"}
    found = {}
    for name, s in stats.items():
        if name not in skip:
            found[name.removeprefix("cmdstat_")] = round(int(s["usec"]) / operations, 3)
            found[name.removeprefix("cmdstat_") + " calls"] = round(int(s["calls"]) / operations, 3)
    return found


async def scenarios(build: Build, count: int) -> dict[str, Cost]:
    r = build.redis
    results: dict[str, Cost] = {}
    made = await build.upload([(f"STD-{i}", "STANDARD", MANY_USAGES) for i in range(STANDARD_COUPONS)])
    assert made == STANDARD_COUPONS, made

    warm = [f"warm-{i}" for i in range(AT_ONCE)]
    await redeem_all(build, await allocate_all(build, warm), warm)
    users = [f"user-{i}" for i in range(count)]
    running = await reset(r)
    codes = await allocate_all(build, users)
    results["allocate"] = cost({}, await script_calls(r), count, await rewrote(r, running))
    log("allocate", results["allocate"])
    BREAKDOWN.update(await commands_per(r, count))

    running = await reset(r)
    await redeem_all(build, codes, users)
    results["redeem"] = cost({}, await script_calls(r), count, await rewrote(r, running))
    log("redeem", results["redeem"])

    await build.upload([(f"UPW-{i}", "STANDARD", 1) for i in range(AT_ONCE)])
    running = await reset(r)
    made = await build.upload([(f"UP-{i}", "STANDARD", 1) for i in range(count)])
    assert made == count, made
    after = await script_calls(r)
    aof = await rewrote(r, running)
    results["upload"] = cost({}, after, count, aof)
    results["upload_per_coupon"] = cost({}, after, count, aof, per=count)
    log("upload", results["upload"])

    await build.upload([(f"MEGA-{i}", "MEGADEAL", MANY_USAGES) for i in range(MEGADEAL_COUPONS)])
    await megadeal_batch(build, [f"mwarm-{i}" for i in range(AT_ONCE)])
    mega = [f"mega-{i}" for i in range(max(AT_ONCE, count // 10))]
    running = await reset(r)
    enter: list[Calls] = [{}, {}]  # summed: before, inside
    leave: list[Calls] = [{}, {}]  # summed: inside, after
    for batch in batches(mega):
        before, inside, after = await megadeal_batch(build, batch)
        for total, reading in ((enter[0], before), (enter[1], inside), (leave[0], inside), (leave[1], after)):
            for name, (c, u) in reading.items():
                c0, u0 = total.get(name, (0, 0))
                total[name] = (c0 + c, u0 + u)
    aof = await rewrote(r, running)
    results["megadeal_enter"] = cost(enter[0], enter[1], len(mega), aof)
    results["megadeal_leave"] = cost(leave[0], leave[1], len(mega), aof)
    log("megadeal enter", results["megadeal_enter"])
    log("megadeal leave", results["megadeal_leave"])
    return results


def log(what: str, c: Cost) -> None:
    print(
        f"  {what}: {c.usec_per_call:.2f} us per {c.command} ({c.calls} calls)", file=sys.stderr, flush=True
    )


async def keys_of(redis: Redis, namespace: str) -> AsyncIterator[str]:
    # "{ns}:..." (the main slot) and "{ns:<i>}:..." (shards), not "{ns2}..."
    async for key in redis.scan_iter(match=f"{{{namespace}[:}}]*", count=1000):
        yield key


async def child(redis_url: str, namespace: str, count: int) -> dict[str, Any]:
    build = await open_build(redis_url, namespace)
    try:
        started = time.perf_counter()
        results = await scenarios(build, count)
        seconds = time.perf_counter() - started
        version = (await build.redis.info("server"))["redis_version"]
    finally:
        keys = [key async for key in keys_of(build.redis, namespace)]
        for start in range(0, len(keys), 1000):
            await build.redis.delete(*keys[start : start + 1000])
        await build.close()
    return {
        "source": build.source,
        "redis_version": version,
        "seconds": round(seconds, 2),
        "scenarios": {name: asdict(c) for name, c in results.items()},
        "allocate_commands": BREAKDOWN,
    }


# =====================================================================================================
# The parent: the Redis server, the old build's worktree, the rounds, the table.
# =====================================================================================================


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_redis(port: int, server: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited ({server.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not answer")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def run_child(build: str, tree: Path, redis_url: str, namespace: str, count: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [PYTHON, str(Path(__file__).resolve()), "--child", "--redis-url", redis_url,
               "--namespace", namespace, "--count", str(count)]  # fmt: skip
    print(f"{build} ({namespace}):", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {build} build's child failed ({done.returncode}); its errors are above")
    result: dict[str, Any] = json.loads(done.stdout)
    source = Path(result["source"]).resolve()
    if not source.is_relative_to(tree.resolve()):
        raise RuntimeError(f"the {build} build imported coupon_pool from {source}, not from {tree}")
    return result


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for _, key in ROWS:
        row: dict[str, Any] = {}
        for build, results in runs.items():
            costs = [r["scenarios"][key] for r in results]
            row[build] = {
                **spread([c["usec_per_call"] for c in costs]),
                "calls": statistics.median(c["calls"] for c in costs),
                "operations": statistics.median(c["operations"] for c in costs),
                "commands": sorted({c["command"] for c in costs}),
                "aof_rewrites": sum(c["aof_rewrite"] for c in costs),
            }
        row["new_over_old"] = round(row["new"]["median"] / row["old"]["median"], 3)
        summary[key] = row
    return summary


def table(summary: dict[str, dict[str, Any]]) -> str:
    def cell(s: dict[str, Any], digits: int) -> str:
        return f"{s['median']:8.{digits}f}  [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

    lines = [
        f"{'us per call in Redis':<20}  {'old: median  [min-max]':<29}  {'new: median  [min-max]':<29}  "
        f"{'new/old':>7}  calls per round (old / new)",
    ]
    for label, key in ROWS:
        row, digits = summary[key], 3 if key == "upload_per_coupon" else 2
        calls = f"{row['old']['calls']:g} / {row['new']['calls']:g}"
        if key == "upload_per_coupon":
            calls = f"{row['old']['operations']:g} / {row['new']['operations']:g} coupons"
        lines.append(f"{label:<20}  {cell(row['old'], digits):<29}  {cell(row['new'], digits):<29}  "
                     f"{row['new_over_old']:7.3f}  {calls}")  # fmt: skip
    return "\n".join(lines)


def breakdown(runs: dict[str, list[dict[str, Any]]]) -> str:
    """What an allocation's script spends its time on: each command's Redis time and calls
    per allocation (medians over the rounds), for each build; the rest of the script's time
    is the script itself (its call, its Lua, and the overhead of each command it calls)."""

    def timed(r: dict[str, Any]) -> dict[str, float]:
        return {n: v for n, v in r["allocate_commands"].items() if not n.endswith(" calls")}

    names = sorted({n for b in runs for r in runs[b] for n in timed(r)})
    lines = [f"{'allocation: per command':<24}  {'old us (calls)':>16}  {'new us (calls)':>16}"]
    totals = {b: statistics.median(sum(timed(r).values()) for r in runs[b]) for b in runs}

    def median(b: str, key: str) -> float:
        return statistics.median(r["allocate_commands"].get(key, 0.0) for r in runs[b])

    for name in sorted(names, key=lambda n: -median("new", n)):
        cells = [f"{median(b, name):7.2f} ({median(b, name + ' calls'):4.1f})" for b in ("old", "new")]
        lines.append(f"{name:<24}  {cells[0]:>16}  {cells[1]:>16}")
    lines.append(f"{'commands in all':<24}  {totals['old']:7.2f}{'':9}  {totals['new']:7.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev", nargs="?", help="the older revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--count", type=int, default=20_000, help="allocations, redemptions, coupons uploaded"
    )
    parser.add_argument("--json", type=Path, help="write every figure there")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.redis_url, args.namespace, args.count))))
        return 0
    if args.rev is None:
        parser.error("REV is required")

    old_commit = git("rev-parse", "--verify", f"{args.rev}^{{commit}}").strip()
    head = git("rev-parse", "HEAD").strip()
    changed = bool(git("status", "--porcelain", "--", ".", ":!measure").strip())  # new modules count
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="redis-cost-") as tmp:
        old_tree = Path(tmp) / "old"
        git("worktree", "add", "--detach", str(old_tree), old_commit)
        port = free_port()
        redis = subprocess.Popen(
            ["redis-server", str(REPO / "redis.conf"), "--port", str(port), "--dir", tmp,
             "--logfile", str(Path(tmp) / "redis.log")],
        )  # fmt: skip
        try:
            wait_for_redis(port, redis)
            redis_url = f"redis://127.0.0.1:{port}/0"
            for n in range(1, args.rounds + 1):
                for build, tree in (("old", old_tree), ("new", REPO)):
                    result = run_child(build, tree, redis_url, f"cost-{build}-{n}", args.count)
                    runs[build].append({"round": n, **result})
        finally:
            redis.terminate()
            redis.wait(30)
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)],
                           check=False)  # fmt: skip

    summary = summarize(runs)
    commands = {
        b: "+".join(sorted({c for key in summary for c in summary[key][b]["commands"]})) for b in runs
    }
    rewrites = sum(summary[key][b]["aof_rewrites"] for key in summary for b in runs)
    print(f"old: {args.rev} ({old_commit[:10]}); new: this working tree (HEAD {head[:10]}"
          f"{', with changes' if changed else ', no changes'}); Redis {runs['old'][0]['redis_version']}; "
          f"{args.rounds} rounds of {args.count}; {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"script calls counted under: old cmdstat_{commands['old']}, new cmdstat_{commands['new']}")
    print(table(summary))
    print(breakdown(runs))
    if rewrites:
        print(f"({rewrites} measurements overlapped an AOF rewrite: see aof_rewrite in the JSON)")
    if args.json:
        report = {"old_rev": args.rev, "old_commit": old_commit, "new_head": head, "new_changed": changed,
                  "rounds": args.rounds, "count": args.count, "summary": summary, "runs": runs}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
