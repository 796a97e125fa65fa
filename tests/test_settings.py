"""Settings.from_env: defaults, overrides and refusals."""

from __future__ import annotations

import pytest

from coupon_pool.settings import Settings, SettingsError


def test_defaults_apply_when_nothing_is_set() -> None:
    assert Settings.from_env({}) == Settings()


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://r:1/2", "PORT": "9000", "KEY_NAMESPACE": "pool-b"})
    assert (settings.redis_url, settings.port, settings.key_namespace) == ("redis://r:1/2", 9000, "pool-b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT must be an integer"),
        ({"UPLOAD_CHUNK_SIZE": "0"}, "UPLOAD_CHUNK_SIZE: must be at least 1"),
        ({"KEY_NAMESPACE": "a}b"}, "KEY_NAMESPACE"),
        ({"REDIS_TIMEOUT_S": "-1"}, "REDIS_TIMEOUT_S"),
    ],
)
def test_bad_values_are_refused_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
