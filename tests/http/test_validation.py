"""Bad input: every malformed, ambiguous or out-of-range body gets a 4xx naming the field.

The matrix runs through the app on a real Redis; the properties (hypothesis) check each
validation rule against an independent statement of it, over many generated inputs.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from coupon_pool.errors import CouponError, InvalidJson, ValidationFailed
from coupon_pool.http.validation import validate_json
from coupon_pool.models import AllocationRequest, CouponIn, RedemptionRequest, UploadRequest
from support.factories import coupon_json

JSON = {"content-type": "application/json"}
FUTURE = "2099-01-01T00:00:00Z"


def dumps(value: Any) -> bytes:
    """Compact JSON; unlike orjson, the standard library writes integers of any size."""
    return json.dumps(value, separators=(",", ":")).encode()


def upload_of(**fields: Any) -> bytes:
    coupon = {"code": "C1", "discount": {"kind": "flat", "value": "1"}, "expires_at": FUTURE} | fields
    return dumps({"coupons": [coupon]})


def upload_raw(old: bytes, new: bytes) -> bytes:
    """A one-coupon upload with the text ``old`` of its JSON replaced by ``new``."""
    return upload_of().replace(old, new)


ALLOCATE, REDEEM, UPLOAD = "/v1/allocations", "/v1/redemptions", "/v1/coupons"
FLAT_ONE = b'"kind":"flat","value":"1"'
NESTED = b"[" * 50 + b"]" * 50
VALUE = (0, "discount.value")

# (path, raw body, (coupon index or None, the field named)); "(body)" is the whole body.
MATRIX: dict[str, tuple[str, bytes, tuple[int | None, str]]] = {
    "repeated key": (ALLOCATE, b'{"user_id":"a","user_id":"b"}', (None, "user_id")),
    "repeated key, spaced": (ALLOCATE, b'{"user_id" : "a" ,\n "user_id":"a"}', (None, "user_id")),
    "repeated key in a coupon": (UPLOAD, upload_raw(b'"code":"C1"', b'"code":"C1","code":"C2"'), (0, "code")),
    "repeated key in a discount": (
        UPLOAD,
        upload_raw(FLAT_ONE, FLAT_ONE + b',"value":"9"'),
        (0, "discount.value"),
    ),
    "nested value": (ALLOCATE, b'{"user_id":"u","type":' + NESTED + b"}", (None, "type")),
    "control character in user_id": (ALLOCATE, b'{"user_id":"u\\u0007"}', (None, "user_id")),
    "NUL in user_id": (ALLOCATE, b'{"user_id":"u\\u0000"}', (None, "user_id")),
    "space in user_id": (ALLOCATE, b'{"user_id":"a b"}', (None, "user_id")),
    "right-to-left override in user_id": (ALLOCATE, '{"user_id":"ab\u202ecd"}'.encode(), (None, "user_id")),
    "user_id of 129 characters": (ALLOCATE, dumps({"user_id": "u" * 129}), (None, "user_id")),
    "accented code": (REDEEM, '{"code":"CAF\u00c9","user_id":"u"}'.encode(), (None, "code")),
    "full-width digits in code": (REDEEM, '{"code":"\uff11\uff12","user_id":"u"}'.encode(), (None, "code")),
    "emoji code": (REDEEM, '{"code":"\U0001f381","user_id":"u"}'.encode(), (None, "code")),
    "code with a newline": (REDEEM, b'{"code":"AB\\n","user_id":"u"}', (None, "code")),
    "Redis key syntax as code": (REDEEM, b'{"code":"{cp}:stats","user_id":"u"}', (None, "code")),
    "huge max_usages": (UPLOAD, upload_of(max_usages=10**400), (0, "max_usages")),
    "max_usages 1e400": (UPLOAD, upload_raw(b"}]}", b',"max_usages":1e400}]}'), (0, "max_usages")),
    "negative max_usages": (UPLOAD, upload_of(max_usages=-1), (0, "max_usages")),
    "max_usages as a boolean": (UPLOAD, upload_of(max_usages=True), (0, "max_usages")),
    "max_usages as text": (UPLOAD, upload_of(max_usages="3"), (0, "max_usages")),
    "30-digit flat amount": (
        UPLOAD,
        upload_of(discount={"kind": "flat", "value": 10**30}),
        (0, "discount.value"),
    ),
    "percent NaN": (UPLOAD, upload_raw(FLAT_ONE, b'"kind":"percent","value":NaN'), VALUE),
    "percent Infinity": (
        UPLOAD,
        upload_raw(FLAT_ONE, b'"kind":"percent","value":Infinity'),
        (0, "discount.value"),
    ),
    "expires_at as a number": (UPLOAD, upload_of(expires_at=4_070_908_800), (0, "expires_at")),
    "expires_at in year 99999": (UPLOAD, upload_of(expires_at="99999-01-01T00:00:00Z"), (0, "expires_at")),
    "user_id as a number": (ALLOCATE, b'{"user_id":123}', (None, "user_id")),
    "user_id null": (ALLOCATE, b'{"user_id":null}', (None, "user_id")),
    "user_id as a list": (ALLOCATE, b'{"user_id":["u"]}', (None, "user_id")),
    "type in lower case": (ALLOCATE, b'{"user_id":"u","type":"standard"}', (None, "type")),
    "type as a number": (ALLOCATE, b'{"user_id":"u","type":1}', (None, "type")),
    "coupons as an object": (UPLOAD, b'{"coupons":{}}', (None, "coupons")),
    "coupon as a string": (UPLOAD, b'{"coupons":["C1"]}', (0, "(body)")),
    "unknown field": (ALLOCATE, b'{"user_id":"u","admin":true}', (None, "admin")),
    "missing field": (ALLOCATE, b'{"type":"FREE"}', (None, "user_id")),
}


@pytest.mark.parametrize(("path", "body", "where"), list(MATRIX.values()), ids=list(MATRIX))
async def test_bad_input_is_422_naming_the_field(
    client: httpx.AsyncClient, redis: Redis, path: str, body: bytes, where: tuple[int | None, str]
) -> None:
    await client.post("/v1/coupons", json={"coupons": [coupon_json("C1")]})
    before = await redis.hgetall("{cp}:stats")
    response = await client.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "validation_error"
    first = problem["errors"][0]
    assert (first.get("index"), first["field"]) == where
    assert where[1] in problem["detail"]
    assert await redis.hgetall("{cp}:stats") == before  # nothing was done


# Bodies that cannot be parsed have no field to name: the problem gives the position.
UNPARSEABLE = {
    "nesting past the parser's limit": b'{"user_id":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "a number of 5,000 digits": b'{"user_id":"u","type":1' + b"0" * 5_000 + b"}",
    "a lone surrogate": b'{"user_id":"\\ud800"}',
    "bytes that are not UTF-8": b'{"user_id":"\xff\xfe"}',
    "a trailing comma": b'{"user_id":"u",}',
    "two documents": b'{"user_id":"u"}{"user_id":"v"}',
    "nothing": b"",
}


@pytest.mark.parametrize("body", list(UNPARSEABLE.values()), ids=list(UNPARSEABLE))
async def test_unparseable_json_is_400_with_its_position(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/v1/allocations", content=body, headers=JSON)
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "invalid_json"
    assert re.search(r"at line \d+ column \d+", problem["detail"])


async def test_a_query_parameter_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/audit", params=[("limit", "1"), ("limit", "500")])
    assert response.status_code == 422
    error = {"field": "limit", "message": "appears more than once: send it once"}
    assert response.json()["errors"] == [error]


async def test_an_unknown_query_parameter_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/audit", params={"limit": "1", "offset": "5"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "offset"


# The rules, stated independently of the models, as the properties' oracles.
CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
USER_ID = re.compile(r"[\x21-\x7e]{1,128}")


def refusal(body: dict[str, Any], model: type[Any]) -> CouponError | None:
    try:
        validate_json(dumps(body), model)
    except CouponError as error:
        return error
    return None


def fields_named(error: CouponError | None) -> list[str]:
    assert isinstance(error, ValidationFailed), error
    return [e["field"] for e in error.extra["errors"]]


@given(st.text(max_size=80) | st.from_regex(CODE, fullmatch=True))
@example("A\n")
@example("x" * 64)
@example("x" * 65)
def test_a_code_is_accepted_exactly_when_it_matches_the_documented_charset(code: str) -> None:
    error = refusal({"code": code, "user_id": "u"}, RedemptionRequest)
    if CODE.fullmatch(code):
        assert error is None
    else:
        assert fields_named(error) == ["code"]


@given(st.text(max_size=140) | st.from_regex(USER_ID, fullmatch=True))
@example("u\x7f")
@example("u" * 128)
def test_a_user_id_is_accepted_exactly_when_it_is_1_to_128_visible_ascii(user_id: str) -> None:
    error = refusal({"user_id": user_id}, AllocationRequest)
    if USER_ID.fullmatch(user_id):
        assert error is None
    else:
        assert fields_named(error) == ["user_id"]


def valid_flat(text: str) -> bool:
    whole, _, fraction = text.partition(".")
    return (
        re.fullmatch(r"0|[1-9][0-9]*", whole) is not None
        and len(whole) <= 12
        and ("." not in text or re.fullmatch(r"[0-9]{1,4}", fraction) is not None)
        and Decimal(text) > 0
    )


amounts = st.decimals(min_value=-10, max_value=10**13, places=5, allow_nan=False).map(str) | st.from_regex(
    r"[0-9]{1,14}(\.[0-9]{0,6})?", fullmatch=True
)


@given(amounts)
@example("999999999999.9999")
@example("1000000000000")
@example("0.0001")
@example("0.00001")
@example("01")
@example("1.")
def test_a_flat_amount_is_accepted_exactly_when_it_fits_and_is_kept_as_sent(text: str) -> None:
    body = {"code": "C", "discount": {"kind": "flat", "value": text}, "expires_at": FUTURE}
    error = refusal(body, CouponIn)
    if valid_flat(text):
        assert error is None
        assert validate_json(dumps(body), CouponIn).discount.value == text
    else:
        assert fields_named(error) == ["discount.value"]


@given(st.integers(min_value=-(10**20), max_value=10**20) | st.integers(min_value=-5, max_value=105))
def test_an_integer_percent_is_accepted_exactly_from_1_to_100(value: int) -> None:
    body = {"code": "C", "discount": {"kind": "percent", "value": value}, "expires_at": FUTURE}
    error = refusal(body, CouponIn)
    if 1 <= value <= 100:
        assert error is None
    else:
        assert fields_named(error) == ["discount.value"]


@given(st.integers(min_value=-(10**30), max_value=10**30) | st.integers(min_value=-2, max_value=1_000_002))
@example(1_000_000)
@example(1_000_001)
def test_max_usages_is_accepted_exactly_from_1_to_a_million(value: int) -> None:
    body = json.loads(upload_of(max_usages=value))["coupons"][0]
    error = refusal(body, CouponIn)
    if 1 <= value <= 1_000_000:
        assert error is None
    else:
        assert fields_named(error) == ["max_usages"]


@given(st.floats(allow_nan=False) | st.booleans() | st.lists(st.integers(), max_size=2))
def test_a_float_boolean_or_list_is_never_an_amount_or_a_usage_count(value: Any) -> None:
    discount = {"kind": "flat", "value": value}
    assert fields_named(refusal({"code": "C", "discount": discount, "expires_at": FUTURE}, CouponIn)) == [
        "discount.value"
    ]
    body = json.loads(upload_of(max_usages=value))["coupons"][0]
    if type(value) is float and value.is_integer() and 1 <= value <= 1_000_000:
        return  # JSON 3.0 is the integer 3 to pydantic's strict mode
    assert fields_named(refusal(body, CouponIn)) == ["max_usages"]


coupon_fields = st.sampled_from(["code", "type", "discount", "expires_at", "max_usages"])


@hypothesis_settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=1, max_value=20), st.data())
def test_a_field_repeated_in_any_coupon_of_an_upload_is_named_with_its_index(count: int, data: Any) -> None:
    coupons = [
        json.loads(upload_of(code=f"C{i}", type="FREE", max_usages=2))["coupons"][0] for i in range(count)
    ]
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    field = data.draw(coupon_fields)
    text = orjson.dumps({"coupons": coupons}).decode()
    # Repeat the field (with its own value) at the start of coupon ``index``.
    start = text.index(f'{{"code":"C{index}"')
    value = orjson.dumps(coupons[index][field]).decode()
    body = f'{text[:start]}{{"{field}":{value},{text[start + 1 :]}'.encode()
    with pytest.raises(ValidationFailed) as refused:
        validate_json(body, UploadRequest)
    assert refused.value.extra["errors"] == [
        {"index": index, "field": field, "message": "appears more than once in the same object: send it once"}
    ]


def test_invalid_json_is_refused_before_looking_for_repeats() -> None:
    with pytest.raises(InvalidJson):
        validate_json(b'{"user_id":"a","user_id":', AllocationRequest)
