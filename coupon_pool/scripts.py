"""Loading the Lua scripts of lua/ into redis-py Script objects (called by SHA)."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def lua_dir() -> Path:
    """The scripts ship inside the wheel as coupon_pool/lua, and live in lua/ in a checkout."""
    packaged = Path(__file__).parent / "lua"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "lua"


def register(redis: Redis, name: str) -> AsyncScript:
    """The script lua/<name>.lua, with lua/lib.lua (the helpers it calls) put before it."""
    folder = lua_dir()
    return redis.register_script((folder / "lib.lua").read_text() + (folder / f"{name}.lua").read_text())
