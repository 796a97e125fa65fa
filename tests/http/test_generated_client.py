"""A client generated from /openapi.json by openapi-python-client runs the whole flow.

The generator knows nothing of this service but its document: if a status, a body or a
header were missing from the document, the generated client could not parse the answer
(``raise_on_unexpected_status`` turns that into an error here). Every answer below,
errors included, must come back as the model the document names.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from support.live_server import LiveServer
from support.redis_server import RedisServer

ADMIN_KEY = "generated-client-admin-key-0123"
CLIENT_KEY = "generated-client-client-key-0123"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "coupon_pool_generated_client"


@pytest.fixture
def generated(tmp_path: Path, redis_server: RedisServer, redis: Redis) -> Any:
    server = LiveServer(
        redis_server.url, COUPON_POOL_ADMIN_KEYS=ADMIN_KEY, COUPON_POOL_CLIENT_KEYS=CLIENT_KEY
    )
    try:
        document = tmp_path / "openapi.json"
        document.write_bytes(httpx.get(f"{server.url}/openapi.json").content)
        done = subprocess.run(
            [str(GENERATOR), "generate", "--path", str(document), "--meta", "none",
             "--output-path", str(tmp_path / PACKAGE)],
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Unable to parse" not in done.stdout + done.stderr, done.stdout
        assert "will be omitted" not in done.stdout + done.stderr, done.stdout
        sys.path.insert(0, str(tmp_path))
        yield server, lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[name]
        server.stop()


def test_a_generated_client_runs_the_whole_flow_and_parses_every_answer(generated: Any) -> None:
    server, module = generated
    api: dict[str, ModuleType] = {
        name: module(f"api.{group}.{name}")
        for group, names in {
            "coupons": ("upload_coupons", "allocate", "redeem", "get_coupon"),
            "pool": ("stats", "purge", "audit"),
            "operations": ("healthz", "readyz", "metrics", "openapi"),
        }.items()
        for name in names
    }
    m = module("models")
    client_module = module("client")
    admin = client_module.AuthenticatedClient(server.url, token=ADMIN_KEY, raise_on_unexpected_status=True)
    client = client_module.AuthenticatedClient(server.url, token=CLIENT_KEY, raise_on_unexpected_status=True)
    anonymous = client_module.Client(server.url, raise_on_unexpected_status=True)
    expires = datetime.now(UTC) + timedelta(hours=1)

    def call(name: str, status: int, expected: type, **kwargs: Any) -> Any:
        answer = api[name].sync_detailed(**kwargs)
        assert answer.status_code == status, (name, answer.content)
        assert isinstance(answer.parsed, expected), (name, answer.parsed)
        assert answer.headers["x-request-id"]
        return answer.parsed

    coupons = [
        m.CouponIn(code="GEN-1", discount=m.FlatDiscountInput(kind="flat", value="12.50"),
                   expires_at=expires),
        m.CouponIn(code="GEN-2", discount=m.PercentDiscountInput(kind="percent", value="100.00"),
                   expires_at=expires, type_=m.CouponType.FREE, max_usages=2),
    ]  # fmt: skip
    uploaded = call(
        "upload_coupons", 201, m.UploadResult, client=admin, body=m.UploadRequest(coupons=coupons)
    )
    assert (uploaded.created, uploaded.duplicates) == (2, [])

    allocated = call(
        "allocate", 201, m.Allocation, client=client, body=m.AllocationRequest(user_id="gen-user")
    )
    assert (allocated.code, allocated.discount.value) == ("GEN-1", "12.50")
    free = call("allocate", 201, m.Allocation, client=client,
                body=m.AllocationRequest(user_id="gen-user", type_=m.CouponType.FREE))  # fmt: skip
    assert free.discount.value == 100
    redeemed = call("redeem", 201, m.Redemption, client=client,
                    body=m.RedemptionRequest(code="GEN-1", user_id="gen-user"))  # fmt: skip
    assert redeemed.used == 1
    assert call("get_coupon", 200, m.Coupon, client=client, code="GEN-1").used == 1
    assert call("stats", 200, m.Stats, client=client).types.free.allocated == 1
    assert call("purge", 200, m.PurgeResult, client=admin).purged.standard == 0
    assert call("audit", 200, m.AuditPage, client=admin, limit=10).entries
    assert call("healthz", 200, m.Health, client=anonymous).status == "ok"
    assert call("readyz", 200, m.Readiness, client=anonymous).status == "ready"
    assert api["metrics"].sync_detailed(client=client).status_code == 200
    assert api["openapi"].sync_detailed(client=anonymous).status_code == 200

    problems = [
        ("allocate", 409, dict(client=client, body=m.AllocationRequest(user_id="gen-user"))),
        ("redeem", 409, dict(client=client, body=m.RedemptionRequest(code="GEN-1", user_id="gen-user"))),
        ("redeem", 404, dict(client=client, body=m.RedemptionRequest(code="NOPE", user_id="gen-user"))),
        ("get_coupon", 404, dict(client=client, code="NOPE")),
        ("get_coupon", 422, dict(client=client, code="not a code")),
        ("stats", 401, dict(client=client_module.AuthenticatedClient(server.url, token="x" * 20))),
        ("purge", 403, dict(client=client)),
        ("upload_coupons", 401, dict(client=anonymous, body=m.UploadRequest(coupons=[]))),
    ]  # fmt: skip
    for name, status, kwargs in problems:
        problem = call(name, status, m.Problem, **kwargs)
        assert (problem.status, problem.code) == (status, problem.code), name
