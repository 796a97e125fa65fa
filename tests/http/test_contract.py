"""The contract: what /openapi.json, README and the service say of each operation agree.

Each operation is declared once (coupon_pool/routes.py); its OpenAPI entry and its error
list are derived from that declaration. These tests pin the places where the document and
the service once disagreed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import ValidationError

from coupon_pool.http.routes import OPERATIONS
from coupon_pool.models import FlatDiscount, PercentDiscount
from coupon_pool.settings import Settings
from support import REPO
from support.factories import coupon_json

METHODS = ("get", "post")


async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, m, entry[m]) for path, entry in doc["paths"].items() for m in METHODS if m in entry]


def accepts(schema: dict[str, Any], doc: dict[str, Any], value: object) -> bool:
    validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
    return validator.is_valid(value)


def service_accepts(model: type[FlatDiscount | PercentDiscount], kind: str, value: object) -> bool:
    try:
        model.model_validate({"kind": kind, "value": value})
    except ValidationError:
        return False
    return True


# The values published patterns and the validators once disagreed on, and their neighbours.
FLAT_SAMPLES = ["0", "0.0", "0.0000", "0.0001", "0.00001", "007", "12.50", "1", "999999999999",
                "9999999999999", "12.", ".5", "-1", "1e3", 0, 1, 10, 999_999_999_999, 10**12, -5,
                1.5]  # fmt: skip
PERCENT_SAMPLES = ["0", "0.0", "0.01", "0.1", "007", "7", "99.99", "100", "100.0", "100.00", "100.01",
                   "101", "999", "999.99", "12.5", "12.555", 0, 1, 100, 101, -1, 12.5]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "samples"), [(FlatDiscount, FLAT_SAMPLES), (PercentDiscount, PERCENT_SAMPLES)]
)
async def test_the_published_discount_schema_accepts_exactly_what_the_service_accepts(
    client: httpx.AsyncClient, model: type[FlatDiscount | PercentDiscount], samples: list[object]
) -> None:
    doc = await document(client)
    schema = doc["components"]["schemas"][f"{model.__name__}-Input"]
    kind = "flat" if model is FlatDiscount else "percent"
    disagree = [
        v for v in samples
        if accepts(schema, doc, {"kind": kind, "value": v}) != service_accepts(model, kind, v)
    ]  # fmt: skip
    assert disagree == []


@pytest.mark.one_slot  # allocated in expiry order; sharded, in expiry order within each shard
async def test_a_whole_percent_sent_with_decimals_comes_back_as_an_integer(client: httpx.AsyncClient) -> None:
    coupons = [
        coupon_json("P100", discount={"kind": "percent", "value": "100.00"}),
        coupon_json("P12", discount={"kind": "percent", "value": "12.50"}, expires_in=7200),
    ]
    assert (await client.post("/v1/coupons", json={"coupons": coupons})).status_code == 201
    first = (await client.post("/v1/allocations", json={"user_id": "a"})).json()
    assert first["discount"] == {"kind": "percent", "value": 100}
    second = (await client.post("/v1/allocations", json={"user_id": "a"})).json()
    assert second["discount"] == {"kind": "percent", "value": "12.50"}
    assert (await client.get("/v1/coupons/P100")).json()["discount"]["value"] == 100


async def test_every_operation_declares_the_errors_any_route_can_answer(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    for path, method, entry in operations(doc):
        for status in ("404", "405", "500"):
            content = entry["responses"][status]["content"]
            assert "application/problem+json" in content, (path, method, status)


async def test_the_upload_declares_every_error_it_can_answer(client: httpx.AsyncClient) -> None:
    upload = (await document(client))["paths"]["/v1/coupons"]["post"]
    assert "upload_worker_lost" in upload["responses"]["503"]["description"]
    assert "too_many_coupons" in upload["responses"]["413"]["description"]


async def test_routes_that_never_call_redis_do_not_declare_store_unavailable(
    client: httpx.AsyncClient,
) -> None:
    doc = await document(client)
    for path in ("/healthz", "/openapi.json"):
        unavailable = doc["paths"][path]["get"]["responses"]["503"]["description"]
        assert "store_unavailable" not in unavailable
        assert "too_many_connections" in unavailable  # the connection layer's, as on every route
    assert "store_unavailable" in doc["paths"]["/readyz"]["get"]["responses"]["503"]["description"]


async def test_response_headers_are_declared(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    for path, method, entry in operations(doc):
        for status, response in entry["responses"].items():
            assert "X-Request-ID" in response["headers"], (path, method, status)
    allocate = doc["paths"]["/v1/allocations"]["post"]["responses"]
    assert "Retry-After" in allocate["429"]["headers"]
    assert "WWW-Authenticate" in allocate["401"]["headers"]
    assert "Allow" in allocate["405"]["headers"]
    assert set(doc["components"]["headers"]) == {
        "X-Request-ID", "Retry-After", "WWW-Authenticate", "Allow", "Idempotent-Replayed"
    }  # fmt: skip


async def test_the_document_names_its_server_tags_contact_and_license(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    assert doc["servers"]
    assert doc["info"]["description"]
    assert doc["info"]["contact"]["name"]
    assert doc["info"]["license"]["name"]
    declared = {t["name"] for t in doc["tags"]}
    assert all(set(entry["tags"]) <= declared for _, _, entry in operations(doc))
    assert all(entry["description"] for _, _, entry in operations(doc))


async def test_maps_keyed_by_type_publish_one_required_property_per_type(client: httpx.AsyncClient) -> None:
    schemas = (await document(client))["components"]["schemas"]
    types = ["FREE", "STANDARD", "MEGADEAL"]
    for model, field in (("Stats", "types"), ("PurgeResult", "purged"), ("PurgeResult", "retired")):
        published = schemas[model]["properties"][field]
        assert list(published["properties"]) == types
        assert published["required"] == types
        assert published["additionalProperties"] is False


async def test_every_response_body_schema_is_closed(client: httpx.AsyncClient) -> None:
    """Health bodies are described, and no answer may carry fields the document does not name."""
    doc = await document(client)
    schemas = doc["components"]["schemas"]
    for name in ("Allocation", "Redemption", "Health", "Readiness", "Stats", "Coupon"):
        assert schemas[name]["additionalProperties"] is False, name
    health = doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"}


async def test_a_bad_path_parameter_is_the_same_422_as_a_bad_body_field(client: httpx.AsyncClient) -> None:
    by_path = (await client.get("/v1/coupons/bad%20code")).json()
    by_body = (await client.post("/v1/redemptions", json={"code": "bad code", "user_id": "u"})).json()
    assert by_path["status"] == by_body["status"] == 422
    assert (
        by_path["errors"]
        == by_body["errors"]
        == [{"field": "code", "message": "String should match pattern '^[A-Za-z0-9_-]{1,64}$'"}]
    )
    assert by_path["detail"] == by_body["detail"]


def test_every_error_an_operation_declares_is_in_readme() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| route | success |") :]
    for op in OPERATIONS:
        for error in op.errors:
            assert f"`{error.code}`" in table, (op.path, error.code)


def test_every_setting_is_declared_once_and_documented() -> None:
    readme = (REPO / "README.md").read_text()
    source = (REPO / "coupon_pool" / "settings.py").read_text()
    for name in Settings.variables():
        assert f"| `{name}`" in readme or f"`{name}` /" in readme or f"/ `{name}`" in readme, name
        assert source.count(f'"{name}"') == 1, name
    assert "from .megadeal" not in source


def test_bench_help_works_whatever_the_environment_says() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coupon_pool", "bench", "--help"],
        env={"PORT": "x", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: coupon-pool bench" in done.stdout


LUA = sorted((REPO / "lua").glob("*.lua"))
_NUMBERED = re.compile(r"\b(KEYS|ARGV)\[\d+\]")
_HASH_CALL = re.compile(r"redis\.call\('H[A-Z]+',([^)]*)\)")


@pytest.mark.parametrize("script", LUA, ids=[p.name for p in LUA])
def test_lua_scripts_name_their_arguments_at_the_top_and_spell_no_type_or_field(script: Path) -> None:
    code = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("--")]
    header = 0
    while header < len(code) and (code[header].startswith("local ") or code[header].startswith("    ")):
        header += 1
    body = "\n".join(code[header:])
    assert not _NUMBERED.search(body), f"{script.name} reads KEYS/ARGV by number below its header"
    for word in ("FREE", "STANDARD", "MEGADEAL"):
        assert f"'{word}'" not in body, f"{script.name} spells the type {word}"
    for call in _HASH_CALL.findall("\n".join(code)):
        if not call.strip().startswith("stats,"):  # the stats hash: "<TYPE>:<counter>" fields
            assert not re.search(r"'[A-Za-z]", call), f"{script.name} spells a coupon hash field: {call}"
