"""Settings.from_env: defaults, overrides and refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from coupon_pool.audit import OPS
from coupon_pool.settings import Range, Settings, SettingsError
from support import REPO


def test_defaults_apply_when_nothing_is_set() -> None:
    assert Settings.from_env({}) == Settings()


def test_the_cluster_settings_are_read() -> None:
    settings = Settings.from_env({"REDIS_CLUSTER": "true", "POOL_SHARDS": "16", "REDIS_WAIT_REPLICAS": "1"})
    assert (settings.redis_cluster, settings.pool_shards, settings.redis_wait_replicas) == (True, 16, 1)
    assert Settings.from_env({"REDIS_CLUSTER": "0"}).redis_cluster is False


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://r:1/2", "PORT": "9000", "KEY_NAMESPACE": "pool-b"})
    assert (settings.redis_url, settings.port, settings.key_namespace) == ("redis://r:1/2", 9000, "pool-b")


def test_pool_low_thresholds_are_counts_or_minutes_and_empty_is_off() -> None:
    settings = Settings.from_env(
        {"POOL_LOW_FREE": "0", "POOL_LOW_STANDARD": "1000000000", "POOL_LOW_MEGADEAL": "1440m"}
    )
    assert settings.pool_low == {"FREE": "0", "STANDARD": "1000000000", "MEGADEAL": "1440m"}
    assert Settings.from_env({"POOL_LOW_STANDARD": "1m", "POOL_LOW_FREE": ""}).pool_low == {"STANDARD": "1m"}
    assert Settings.from_env({}).pool_low == {}


UNPARSED = ".*if it has a port: 1 to 65535; if brackets: closed; if IDNA: valid"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT must be an integer"),
        ({"PORT": "70000"}, "PORT: must be 1 to 65,535, not 70000"),
        ({"PORT": "0"}, "PORT: must be 1 to 65,535, not 0"),
        ({"HOST": "local host"}, "HOST: must be an IP address or a host name"),
        ({"HOST": ""}, "HOST: must be an IP address or a host name"),
        ({"WORKERS": "65"}, "WORKERS: must be 1 to 64"),
        ({"UPLOAD_CHUNK_SIZE": "0"}, "UPLOAD_CHUNK_SIZE: must be 1 to 5,000"),
        ({"UPLOAD_CHUNK_SIZE": "8000"}, "UPLOAD_CHUNK_SIZE: must be 1 to 5,000"),
        ({"KEY_NAMESPACE": "a}b"}, "KEY_NAMESPACE"),
        ({"REDIS_TIMEOUT_S": "-1"}, "REDIS_TIMEOUT_S: must be above 0 and at most 60"),
        ({"REDIS_TIMEOUT_S": "inf"}, "REDIS_TIMEOUT_S: must be above 0 and at most 60, not inf"),
        ({"REDIS_TIMEOUT_S": "nan"}, "REDIS_TIMEOUT_S: must be above 0 and at most 60, not nan"),
        ({"PURGE_INTERVAL_S": "0.01"}, "PURGE_INTERVAL_S: must be 0.1 to 86,400"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER must be 1 or 0"),
        ({"POOL_SHARDS": "0"}, "POOL_SHARDS: must be 1 to 256"),
        ({"POOL_SHARDS": "257"}, "POOL_SHARDS: must be 1 to 256"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS: must be 0 to 100"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS: must be 1 to 60,000"),
        ({"POOL_LOW_STANDARD": "ten"}, "POOL_LOW_STANDARD: must be a count of available coupons, 0 to 1,"),
        ({"POOL_LOW_FREE": "1000000001"}, "POOL_LOW_FREE: must be a count .* not '1000000001'"),
        ({"POOL_LOW_FREE": "-1"}, "POOL_LOW_FREE: must be a count"),
        ({"POOL_LOW_MEGADEAL": "0m"}, "POOL_LOW_MEGADEAL: must be .* minutes of supply, 1m to 1,440m"),
        ({"POOL_LOW_MEGADEAL": "1441m"}, "POOL_LOW_MEGADEAL: must be"),
        ({"POOL_LOW_STANDARD": "5 m"}, "POOL_LOW_STANDARD: must be"),
        ({"POOL_LOW_STANDARD": "5M"}, "POOL_LOW_STANDARD: must be"),
        ({"POOL_LOW_INTERVAL_S": "0.05"}, "POOL_LOW_INTERVAL_S: must be 0.1 to 3,600"),
        ({"COUPON_POOL_CLIENT_KEYS": ",".join(f"client-key-{i:06d}" for i in range(101))},
         "COUPON_POOL_CLIENT_KEYS: at most 100 keys, not 101"),
        ({"WEBHOOK_URL": "ftp://h.example/in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: must be an http"),
        ({"WEBHOOK_URL": "https:///in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: must be an http"),
        ({"WEBHOOK_URL": "https://h/a b", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: must be an http"),
        ({"WEBHOOK_URL": "https://h:abc/in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: " + UNPARSED),
        ({"WEBHOOK_URL": "https://[::1/in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: " + UNPARSED),
        ({"WEBHOOK_URL": "https://h:99999/in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: " + UNPARSED),
        ({"WEBHOOK_URL": "https://h:0/in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: " + UNPARSED),
        ({"WEBHOOK_URL": "https://xn--a.example/in", "WEBHOOK_SECRET": "s" * 16}, "WEBHOOK_URL: " + UNPARSED),
        ({"WEBHOOK_URL": "https://h/" + "a" * 2040, "WEBHOOK_SECRET": "s" * 16},
         "WEBHOOK_URL: must be at most 2,048 characters, not 2,050"),
        ({"WEBHOOK_URL": "https://hooks.example/in"}, "WEBHOOK_SECRET: must be set when WEBHOOK_URL is"),
        ({"WEBHOOK_SECRET": "too-short"}, "WEBHOOK_SECRET: must be 16-256 printable ASCII"),
        ({"WEBHOOK_SECRET": "sixteen chars with blanks"}, "WEBHOOK_SECRET: must be 16-256 printable ASCII"),
        ({"WEBHOOK_SECRET": "é" * 16}, "WEBHOOK_SECRET: must be 16-256 printable ASCII"),
        ({"WEBHOOK_OPS": "allocate,Redeem"}, "WEBHOOK_OPS: unknown op 'Redeem': each must be one of upload,"),
        ({"WEBHOOK_BATCH": "0"}, "WEBHOOK_BATCH: must be 1 to 1,000"),
        ({"WEBHOOK_BATCH": "1001"}, "WEBHOOK_BATCH: must be 1 to 1,000"),
        ({"WEBHOOK_TIMEOUT_S": "0"}, "WEBHOOK_TIMEOUT_S: must be above 0 and at most 300"),
        ({"WEBHOOK_RETRY_HORIZON_S": "0.5"}, "WEBHOOK_RETRY_HORIZON_S: must be 1 to 2,592,000"),
        ({"WEBHOOK_LEASE_S": "0.1"}, "WEBHOOK_LEASE_S: must be 0.5 to 300"),
        ({"WEBHOOK_PARKED_MAX": "0"}, "WEBHOOK_PARKED_MAX: must be 1 to 1,000,000"),
        ({"WEBHOOK_BACKOFF_S": "10", "WEBHOOK_MAX_BACKOFF_S": "5"},
         "WEBHOOK_MAX_BACKOFF_S: must be at least WEBHOOK_BACKOFF_S"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_a_webhook_endpoint_is_read_and_its_secret_never_shown() -> None:
    settings = Settings.from_env(
        {"WEBHOOK_URL": "https://hooks.example/in", "WEBHOOK_SECRET": "whsec-0123456789abcdef",
         "WEBHOOK_OPS": " allocate, redeem ,", "WEBHOOK_RETRY_HORIZON_S": "1"}
    )  # fmt: skip
    assert settings.webhook_ops == ("allocate", "redeem")
    assert settings.webhook_retry_horizon_s == 1
    assert "WEBHOOK_SECRET=(set)" in settings.described()
    assert "whsec" not in repr(settings) + "".join(settings.described())
    assert Settings().webhook_url == ""
    assert "WEBHOOK_SECRET=(not set)" in Settings().described()
    with_password = Settings(webhook_url="https://hooks:pw-secret@h.example/in", webhook_secret="s" * 16)
    assert "WEBHOOK_URL=https://hooks:***@h.example/in" in with_password.described()
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"WEBHOOK_SECRET": "bad secret value with blanks"})
    assert "bad secret" not in str(refused.value)


HOOK_SECRET = "crm-secret-0123456789abcdef"


def hooks_env(*endpoints: dict[str, object]) -> dict[str, str]:
    return {"WEBHOOK_ENDPOINTS": json.dumps(list(endpoints))}


def crm(**more: object) -> dict[str, object]:
    return {"name": "crm", "url": "https://crm.example/in", "secret": HOOK_SECRET, **more}


def test_more_endpoints_are_read_after_webhook_urls_and_their_secrets_never_shown() -> None:
    settings = Settings.from_env(
        {"WEBHOOK_URL": "https://hooks.example/in", "WEBHOOK_SECRET": "whsec-0123456789abcdef",
         **hooks_env(crm(url="https://u:pw-secret@crm.example/in"), crm(name="fraud", ops=["redeem"]))}
    )  # fmt: skip
    assert [(h.name, h.ops) for h in settings.hooks] == [("default", ()), ("crm", ()), ("fraud", ("redeem",))]
    assert settings.hooks[2].secret == HOOK_SECRET
    shown = repr(settings) + "".join(settings.described())
    assert "WEBHOOK_ENDPOINTS=crm https://u:***@crm.example/in, fraud https://crm.example/in" in shown
    assert "crm-secret" not in shown
    assert "pw-secret" not in shown
    assert Settings.from_env(hooks_env(crm())).hooks == Settings.from_env(hooks_env(crm())).webhook_endpoints
    assert Settings().hooks == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEBHOOK_ENDPOINTS": "{"}, "must be a JSON array of endpoints"),
        ({"WEBHOOK_ENDPOINTS": '{"name": "crm"}'}, "must be a JSON array of objects"),
        ({"WEBHOOK_ENDPOINTS": "[" + "1," * 40_000 + "1]"}, "must be at most 65,536 bytes"),
        (hooks_env({"name": "crm", "url": "https://crm.example/in"}), "must have name, url, secret"),
        (hooks_env(crm(headers={})), "and optionally ops; not 'headers'"),
        (hooks_env(crm(ops="redeem")), "ops a list of them"),
        (hooks_env(crm(name=7)), "name, url and secret are strings"),
        (hooks_env(crm(name="default")), "endpoint 1: name must be 1-32 of a-z 0-9 _ - and not 'default'"),
        (hooks_env(crm(name="CRM")), "endpoint 1: name must be 1-32"),
        (hooks_env(crm(name="a" * 33)), "endpoint 1: name must be 1-32"),
        (hooks_env(crm(), crm()), "name 'crm' is given twice"),
        (hooks_env(*(crm(name=f"h{i}") for i in range(9))), "at most 8 endpoints, not 9"),
        (hooks_env(crm(url="ftp://crm.example/in")), r"endpoint 1 \(crm\): url must be an http"),
        (hooks_env(crm(url="https://crm.example:abc/in")), r"endpoint 1 \(crm\): url " + UNPARSED),
        (hooks_env(crm(url="https://crm.example:99999/in")), r"endpoint 1 \(crm\): url " + UNPARSED),
        (hooks_env(crm(url="https://xn--a.example/in")), r"endpoint 1 \(crm\): url " + UNPARSED),
        (hooks_env(crm(url="")), r"endpoint 1 \(crm\): url must be set, an http:// or https:// URL$"),
        (hooks_env({"name": "crm", "url": "https://crm.example/in"}), "; it lacks secret$"),
        (hooks_env(crm(url=7, ops=[1])), "ops a list of them; not url, ops$"),
        ({"WEBHOOK_ENDPOINTS": '[{"name": "crm", "url": "https://a.example/", "url": "https://b.example/",'
                               ' "secret": "whsec-0123456789abcdef"}]'}, "an endpoint gives 'url' twice"),
        ({"WEBHOOK_ENDPOINTS": "[" * 30_000 + "]" * 30_000}, "JSON array of endpoints .it does not parse"),
        ({"WEBHOOK_ENDPOINTS": '[{"name": "\udcff"}]'}, "must be UTF-8 text"),
        (hooks_env(crm(secret="short")), r"endpoint 1 \(crm\): secret must be set, 16-256"),
        (hooks_env(crm(secret="")), r"endpoint 1 \(crm\): secret must be set"),
        (hooks_env(crm(ops=["alocate"])), r"endpoint 1 \(crm\): ops: unknown op 'alocate'"),
    ],
)  # fmt: skip
def test_bad_endpoints_are_refused_at_start_up_never_echoing_a_secret(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as refused:
        Settings.from_env(env)
    assert "crm-secret" not in str(refused.value)
    assert "'short'" not in str(refused.value)


@pytest.mark.parametrize(
    "endpoints",
    [
        "[{" + ", ".join(f'"k{i}": 1' for i in range(5000)) + "}]",  # unknown keys
        "[{" + ", ".join(f'"k{i % 2000}": 1' for i in range(5000)) + "}]",  # keys given twice
    ],
)
def test_an_endpoint_of_thousands_of_keys_is_refused_in_a_line_naming_a_few(endpoints: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"WEBHOOK_ENDPOINTS": endpoints})
    assert " and more" in str(refused.value)
    assert len(str(refused.value)) < 300


def test_an_op_no_audit_entry_carries_is_refused_naming_it_and_the_known_ones() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"WEBHOOK_OPS": "alocate,redeem,relase,alocate"})

    assert refused.value.problems == (
        "WEBHOOK_OPS: unknown ops 'alocate', 'relase': each must be one of " + ", ".join(OPS)
        + ", not ('alocate', 'redeem', 'relase', 'alocate')",
    )  # fmt: skip
    assert Settings.from_env({"WEBHOOK_OPS": ",".join(OPS)}).webhook_ops == OPS


@pytest.mark.parametrize(
    "url",
    [
        "redis://:<openssl rand -hex 32>@redis:6379/0",  # .env.example's placeholder, as compose builds it
        "http://127.0.0.1:6379/0",
        "127.0.0.1:6379",
    ],
)
def test_a_redis_url_that_cannot_be_one_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env({"REDIS_URL": url})
    assert "openssl" not in str(refused.value)


def test_config_prints_every_setting_with_secrets_hidden() -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://:pw-secret@redis:6379/0",
           "COUPON_POOL_ADMIN_KEYS": "a" * 32 + "," + "b" * 32}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "coupon_pool", "config"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split("=")[0] for line in lines] == Settings.variables()
    assert "REDIS_URL=redis://:***@redis:6379/0" in lines
    assert "COUPON_POOL_ADMIN_KEYS=(2 keys)" in lines
    assert "COUPON_POOL_CLIENT_KEYS=(0 keys)" in lines
    assert "pw-secret" not in done.stdout
    assert "a" * 32 not in done.stdout


def test_config_refuses_env_example_placeholders_with_exit_2() -> None:
    placeholders = dict(
        line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines() if line[:1].isalpha()
    )
    env = {"PATH": "/usr/bin:/bin", "COUPON_POOL_ADMIN_KEYS": placeholders["COUPON_POOL_ADMIN_KEYS"]}
    done = subprocess.run([sys.executable, "-m", "coupon_pool", "config"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.startswith("coupon-pool: COUPON_POOL_ADMIN_KEYS: key 1 must be 16-256 characters")


def test_every_refused_value_is_named_at_once() -> None:
    env = {"PORT": "eighty", "KEY_NAMESPACE": "a}b", "COUPON_POOL_ADMIN_KEYS": "short"}
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)

    assert [problem.split(":")[0].split(" ")[0] for problem in refused.value.problems] == [
        "PORT", "KEY_NAMESPACE", "COUPON_POOL_ADMIN_KEYS"
    ]  # fmt: skip


def test_every_setting_has_a_bound_and_readme_states_each_range() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| variable | default | allowed | meaning |") :].split("\n\n")[0]
    rows = {line.split(" | ")[0]: line.split(" | ")[2] for line in table.splitlines()[2:]}
    for f in dataclasses.fields(Settings):
        name, check = f.metadata["env"], f.metadata["check"]
        assert check is not None or f.type == "bool", f"{name} has no bound"  # a flag: 1 or 0
        row = next(allowed for variables, allowed in rows.items() if f"`{name}`" in variables)
        if isinstance(check, Range):
            assert any(part.startswith(str(check)) for part in row.split(" / ")), (name, row)


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["config"], {"PORT": "70000"}), (["serve"], {"PORT": "70000"}), (["serve", "--port", "70000"], {})],
    ids=["config", "serve", "serve --port"],
)
def test_a_port_out_of_range_stops_config_and_serve_with_exit_2(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "coupon_pool", *argv], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip

    assert done.returncode == 2
    assert done.stderr == "coupon-pool: PORT: must be 1 to 65,535, not 70000\n"
