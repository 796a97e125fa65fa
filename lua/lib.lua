-- lib.lua: helpers shared by the scripts. scripts.py puts this file before every script
-- it loads (after the F_* constants, the coupon hash's field names from keys.py), so each
-- script can call these functions; it does nothing on its own.

-- Redis server time in milliseconds since the epoch: one clock for every app process.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- Reserve one usage of the first-expiring coupon in `available` that `user` does not hold
-- yet, counting it in `stats` under "<ctype>:allocated". Coupon hashes are prefix .. code.
-- A coupon whose last usage this reserves moves from `available` to `exhausted` (same
-- score, its expiry), so each coupon is in exactly one sorted set for the purge to find.
-- Returns {"ok", code, discount kind, discount value, expires_at ms, allocated_at ms}
--      or {"pool_empty"}.
local function allocate_one(available, exhausted, stats, prefix, user, ctype, now)
  local holder = F_HOLDER .. user
  -- Nearly always the first coupon will do (the user does not hold it yet): fetch one,
  -- then more at a time while the user turns out to hold them (1, 4, 16, 64, 64, ...).
  local batch_size = 1
  local offset = 0
  while true do
    -- "(" excludes now: a coupon whose expiry is now is already expired.
    local codes = redis.call('ZRANGE', available, '(' .. now, '+inf', 'BYSCORE',
      'LIMIT', offset, batch_size)
    if #codes == 0 then
      return { 'pool_empty' }
    end
    for _, code in ipairs(codes) do
      local key = prefix .. code
      if redis.call('HSETNX', key, holder, now) == 1 then
        local allocated = redis.call('HINCRBY', key, F_ALLOCATED, 1)
        local c = redis.call('HMGET', key, F_DISCOUNT_KIND, F_DISCOUNT_VALUE, F_EXPIRES, F_MAX_USAGES)
        if allocated >= tonumber(c[4]) then
          redis.call('ZREM', available, code)
          redis.call('ZADD', exhausted, c[3], code)
        end
        redis.call('HINCRBY', stats, ctype .. ':allocated', 1)
        return { 'ok', code, c[1], c[2], c[3], now }
      end
    end
    offset = offset + batch_size
    batch_size = math.min(batch_size * 4, 64)
  end
end

-- Append one entry to the audit stream, trimmed to about `maxlen` entries. Called by the
-- script whose operation it records, so the trail can never disagree with the data.
local function audit(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end

-- The audit entry of an allocation: its code, or the error it ended with.
local function audit_allocation(stream, maxlen, ctype, user, result)
  if result[1] == 'ok' then
    audit(stream, maxlen, 'op', 'allocate', 'type', ctype, 'user_id', user, 'code', result[2])
  else
    audit(stream, maxlen, 'op', 'allocate', 'type', ctype, 'user_id', user, 'error', result[1])
  end
end

-- Push "1" to the wake list (wake_prefix .. ticket, kept keep_ms) of each of the first
-- min(free slots, free window places) tickets of the MEGADEAL queue: those waiting for a
-- slot are blocked on that list. Returns the number of waiters woken.
local function wake_waiters(queue, slots, window, wake_prefix, max_concurrent, rate, window_ms, keep_ms, now)
  local free_slots = max_concurrent - redis.call('ZCARD', slots)
  local free_rate = rate - redis.call('ZCOUNT', window, '(' .. (now - window_ms), '+inf')
  local n = math.min(free_slots, free_rate)
  if n <= 0 then
    return 0
  end
  local woken = redis.call('ZRANGE', queue, 0, n - 1)
  for _, waiter in ipairs(woken) do
    local key = wake_prefix .. waiter
    redis.call('RPUSH', key, '1')
    redis.call('PEXPIRE', key, keep_ms)
  end
  return #woken
end
