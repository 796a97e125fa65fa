"""A screenshot of a running service's dashboard, in Debian's headless Chromium.

    .venv/bin/python measure/dashboard_screenshot.py http://127.0.0.1:8080 docs/dashboard.png [--wait 20]

It loads /dashboard, lets it refresh for --wait seconds (so the chart has a history: run
a load beside it, such as `coupon-pool bench mixed --duration 60`), then saves the page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # support/, when run as a file
from support.browser import chromium


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("output", type=Path)
    parser.add_argument("--wait", type=float, default=20.0, help="seconds of refreshes before the picture")
    parser.add_argument("--api-key", help="for a service with keys (an admin key shows the audit trail)")
    args = parser.parse_args()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{args.url}/dashboard")
        if args.api_key:
            page.fill("#key", args.api_key)
            page.click("button[type=submit]")
        page.wait_for_timeout(args.wait * 1000)
        page.screenshot(path=str(args.output), full_page=True)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
