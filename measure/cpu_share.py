"""CPU share of each Python and Redis process over a few seconds, from /proc (Linux).

    python measure/cpu_share.py [SECONDS]     (default 5)

Run it while a benchmark runs: it prints each process that used at least 2% of a core,
busiest first (100% = one core), e.g. the uvicorn workers, Redis and the load client.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

WATCHED = (b"python", b"redis-server", b"coupon-pool", b"uvicorn")


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """pid -> (user + system clock ticks so far, command line) of the watched processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if any(name in command for name in WATCHED):
            # After the ")" of the name: state is field 3 of stat(5), utime 14 and stime 15.
            found[int(entry.name)] = (
                int(fields[11]) + int(fields[12]),
                command.replace(b"\0", b" ").decode(),
            )
    return found


def main(seconds: float) -> None:
    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    hertz = os.sysconf("SC_CLK_TCK")
    shares = [
        ((ticks - before[pid][0]) / hertz / seconds * 100, pid, command)
        for pid, (ticks, command) in after.items()
        if pid in before and pid != os.getpid()
    ]
    for share, pid, command in sorted(shares, reverse=True):
        if share >= 2:
            print(f"{share:5.0f}%  {pid:>7}  {command[:100]}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
