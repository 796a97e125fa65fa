"""Fire N MEGADEAL allocations at once at a running service and report what the gate did.

    python scripts/megadeal_burst.py [N] [BASE_URL]     (defaults: 150, http://127.0.0.1:8080)

Upload MEGADEAL coupons first (scripts/gen_coupons.py makes a third of them MEGADEAL).
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime

import httpx


async def burst(count: int, base_url: str) -> None:
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        start = time.monotonic()

        async def one(i: int) -> tuple[httpx.Response, float]:
            response = await http.post("/v1/allocations", json={"user_id": f"burst-{i}", "type": "MEGADEAL"})
            return response, time.monotonic() - start

        results = await asyncio.gather(*(one(i) for i in range(count)))
    served = [r.json() for r, _ in results if r.status_code == 201]
    failed = [elapsed for r, elapsed in results if r.status_code == 429]
    ms = sorted(round(datetime.fromisoformat(a["allocated_at"]).timestamp() * 1000) for a in served)
    worst = max((sum(1 for u in ms if t <= u < t + 1000) for t in ms), default=0)
    print(f"served {len(served)}, 429 {len(failed)}, other {count - len(served) - len(failed)}")
    print(f"most allocations in a rolling second: {worst}")
    if failed:
        print(f"429s answered after {min(failed):.3f}-{max(failed):.3f} s")


if __name__ == "__main__":
    asyncio.run(burst(int(sys.argv[1]) if len(sys.argv) > 1 else 150,
                      sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8080"))  # fmt: skip
