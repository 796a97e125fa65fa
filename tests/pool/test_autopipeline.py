"""Auto-pipelining on a real Redis: one pipeline per event-loop turn, each reply to its caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coupon_pool.pool.autopipeline import AutoPipeline
from coupon_pool.pool.connection import NotReplicated
from support.redis_server import RedisServer

LIBRARY = """#!lua name=autopipeline_test
redis.register_function('echo', function(keys, args)
  if args[1] == 'fail' then return redis.error_reply('failed as asked') end
  return args[1]
end)
redis.register_function('count', function(keys, args) return redis.call('INCR', keys[1]) end)
redis.register_function{function_name='read', callback=function(keys, args) return args[1] end,
  flags={'no-writes'}}
redis.register_function('slow', function(keys, args)
  local x = 0 for i = 1, 80000000 do x = x + i end return x  -- about 0.4 s
end)
"""
ECHO, COUNT, SLOW, READ = b"echo", b"count", b"slow", b"read"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True, client_name="autopipeline-test")
    await client.flushall()
    await client.function_load(LIBRARY, replace=True)
    yield client
    await client.aclose()


async def connections_named(redis: Redis, name: str) -> int:
    return sum(1 for c in await redis.client_list() if c["name"] == name)


async def test_each_caller_gets_its_own_reply(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    replies = await asyncio.gather(*(pipeline.run(ECHO, [], [f"call-{i}"]) for i in range(300)))
    assert replies == [f"call-{i}" for i in range(300)]


async def test_calls_of_one_turn_share_a_connection_per_batch(redis_server: RedisServer) -> None:
    redis = Redis.from_url(
        redis_server.url, decode_responses=True, client_name="batched", max_connections=300
    )
    pipeline = AutoPipeline(redis, max_batch=100)
    await redis.function_load(LIBRARY, replace=True)
    # 250 callers in one turn: three pipelines (100, 100, 50), three connections at most.
    await asyncio.gather(*(pipeline.run(ECHO, [], [str(i)]) for i in range(250)))
    assert await connections_named(redis, "batched") <= 3
    # The same calls one by one, as redis-py makes them: a connection each while all wait.
    await asyncio.gather(*(redis.fcall("echo", 0, str(i)) for i in range(250)))
    assert await connections_named(redis, "batched") > 50
    await redis.aclose()


async def test_a_script_error_goes_to_its_caller_alone(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    replies = await asyncio.gather(
        pipeline.run(ECHO, [], ["a"]),
        pipeline.run(ECHO, [], ["fail"]),
        pipeline.run(ECHO, [], ["b"]),
        return_exceptions=True,
    )
    assert (replies[0], replies[2]) == ("a", "b")
    assert isinstance(replies[1], ResponseError)
    assert "failed as asked" in str(replies[1])


async def test_functions_lost_by_redis_are_loaded_again_once_and_each_call_runs_once(redis: Redis) -> None:
    loads = 0

    async def reload() -> None:
        nonlocal loads
        loads += 1
        await redis.function_load(LIBRARY, replace=True)

    pipeline = AutoPipeline(redis, reload=reload)
    await pipeline.run(COUNT, ["n"], [])
    await redis.function_flush()  # as a new empty Redis: every call of the next turn finds no function
    replies = await asyncio.gather(*(pipeline.run(COUNT, ["n"], []) for _ in range(50)))
    assert sorted(replies) == list(range(2, 52))
    assert await redis.get("n") == "51"
    assert loads == 1


async def test_a_timed_out_batch_fails_each_of_its_callers_with_a_timeout(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=0.05)
    pipeline = AutoPipeline(redis)
    await redis.function_load(LIBRARY, replace=True)
    replies = await asyncio.gather(
        pipeline.run(SLOW, [], []), pipeline.run(ECHO, [], ["x"]), return_exceptions=True
    )
    assert all(isinstance(r, RedisTimeoutError) for r in replies)
    assert replies[0] is not replies[1]  # each caller raises an exception of its own
    await asyncio.sleep(1)  # the slow function ends; the next turn works on a new connection
    assert await pipeline.run(ECHO, [], ["after"]) == "after"
    await redis.aclose()


async def test_a_call_cancelled_before_it_is_sent_does_not_run(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    await redis.fcall("count", 1, "n")
    calls = [asyncio.create_task(pipeline.run(COUNT, ["n"], [])) for _ in range(10)]
    await asyncio.sleep(0)  # every call is queued for this turn's pipeline
    calls[3].cancel()
    replies = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(replies[3], asyncio.CancelledError)
    assert sorted(r for r in replies if isinstance(r, int)) == list(range(2, 11))
    assert await redis.get("n") == "10"


async def test_the_callers_of_a_pipeline_cut_short_get_an_error_rather_than_wait_forever(
    redis: Redis,
) -> None:
    pipeline = AutoPipeline(redis)
    call = asyncio.create_task(pipeline.run(SLOW, [], []))
    await asyncio.sleep(0.05)  # its pipeline is in flight, waiting for Redis
    for sending in pipeline._sending:  # as a shutdown cancelling every task would
        sending.cancel()
    with pytest.raises(RedisError, match="ended without this call's reply"):
        await asyncio.wait_for(call, 2)
    await asyncio.sleep(0.5)  # let the slow function end before the next test


async def test_a_wait_refused_by_a_replica_leaves_each_call_its_own_answer(tmp_path: Path) -> None:
    """A master that a failover made a replica refuses WAIT ("cannot be used with replica
    instances"). That refusal says nothing was confirmed: a call that ran is NotReplicated
    (503, send again with the Idempotency-Key), a call refused (READONLY, so the cluster
    client sends it to the new master) keeps its refusal; none gets the WAIT's error."""
    master_server = RedisServer(tmp_path / "master", "--appendonly", "no").start()
    replica_server = RedisServer(
        tmp_path / "replica", "--replicaof", "127.0.0.1", str(master_server.port), "--appendonly", "no"
    ).start()
    master = Redis.from_url(master_server.url, decode_responses=True)
    replica = Redis.from_url(replica_server.url, decode_responses=True)
    try:
        await master.function_load(LIBRARY, replace=True)
        await _until_synced(replica)
        pipeline = AutoPipeline(replica, wait_replicas=1, wait_timeout_ms=100)
        read, write = await asyncio.gather(
            pipeline.run(READ, [], ["x"]), pipeline.run(COUNT, ["n"], []), return_exceptions=True
        )
        assert isinstance(read, NotReplicated)
        assert isinstance(write, ReadOnlyError)
    finally:
        await replica.aclose()
        await master.aclose()
        replica_server.kill()  # nothing of either to keep
        master_server.kill()


async def _until_synced(replica: Redis) -> None:
    """Until the replica has the master's functions and its link is up (10 s at most)."""
    for _ in range(200):
        if (
            await replica.function_list()
            and (await replica.info("replication"))["master_link_status"] == "up"
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica did not sync within 10 s")
