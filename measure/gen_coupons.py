"""Write an upload body of N coupons to stdout: python measure/gen_coupons.py 50000 PREFIX > body.json"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import orjson

TYPES = ("STANDARD", "FREE", "MEGADEAL")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    prefix = sys.argv[2] if len(sys.argv) > 2 else "GEN"
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    coupons = [
        {
            "code": f"{prefix}-{i:07d}",
            "type": TYPES[i % 3],
            "discount": {"kind": "flat", "value": "12.50"} if i % 2 else {"kind": "percent", "value": 15},
            "expires_at": expires,
            "max_usages": 1 + i % 3,
        }
        for i in range(count)
    ]
    sys.stdout.buffer.write(orjson.dumps({"coupons": coupons}))


if __name__ == "__main__":
    main()
