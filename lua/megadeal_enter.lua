-- megadeal_enter.lua: take a place in the MEGADEAL queue, or be admitted and allocated.
--
-- The limits: at most ARGV[4] admitted requests hold a slot at once, and at most ARGV[5]
-- admissions in any rolling window of ARGV[6] ms. Waiters are admitted in ticket order
-- (first come, first served): a ticket is admitted only when its rank in the queue is
-- below both the free slots and the free places in the window, so no later ticket takes
-- capacity an earlier live one could use.
--
-- KEYS[1]  available set of MEGADEAL coupons
-- KEYS[2]  stats hash
-- KEYS[3]  queue (sorted set: ticket -> ticket, i.e. arrival order)
-- KEYS[4]  waiter heartbeats (sorted set: ticket -> alive until ms); a waiter that stops
--          calling (its process died) is dropped from the queue when this passes
-- KEYS[5]  slots (sorted set: ticket -> lease end ms); a slot whose holder died frees
--          itself when its lease ends
-- KEYS[6]  admissions in the window (sorted set: ticket -> admitted at ms)
-- KEYS[7]  ticket counter (string)
-- KEYS[8]  high-water mark of slots held at once (string)
-- KEYS[9]  audit stream
-- KEYS[10] exhausted set (where allocate_one moves a coupon with no free usage left)
-- ARGV[1]  key prefix of coupon hashes
-- ARGV[2]  user id
-- ARGV[3]  ticket, or "" on the first call
-- ARGV[4]  max concurrent     ARGV[5] max admissions per window    ARGV[6] window ms
-- ARGV[7]  lease ms           ARGV[8] longest sleep before calling again (heartbeat) ms
-- ARGV[9]  grace ms added to a waiter's heartbeat
-- ARGV[10] audit stream length cap (approximate)
--
-- Returns {"ok", ticket, code, kind, value, expires_at ms, allocated_at ms}: admitted,
--          allocated, and holding a slot until megadeal_leave.lua or the lease ends;
--      or {"pool_empty", ticket}: nothing to allocate (not queued);
--      or {"wait", ticket, wait ms, reason, rank}: call again after wait ms at the latest;
--          reason "rate" (the window opens then: sleep) or "slot" (a slot frees at the
--          latest then; megadeal_leave.lua pushes to the ticket's wake list sooner).
-- Writes an audit entry (as allocate.lua does) when it admits or answers pool_empty.
-- Uses now_ms(), allocate_one() and audit_allocation() from lib.lua.

local queue, alive, slots, window = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local max_concurrent, rate, window_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease_ms, max_sleep_ms, grace_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()

-- Forget waiters that stopped calling, leases that ended and admissions out of the window.
for _, dead in ipairs(redis.call('ZRANGE', alive, '-inf', now, 'BYSCORE')) do
  redis.call('ZREM', queue, dead)
end
redis.call('ZREMRANGEBYSCORE', alive, '-inf', now)
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
redis.call('ZREMRANGEBYSCORE', window, '-inf', now - window_ms)

local ticket = ARGV[3]
if ticket == '' then
  ticket = tostring(redis.call('INCR', KEYS[7]))
end

local function leave_queue()
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', alive, ticket)
end

if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then
  leave_queue()
  audit_allocation(KEYS[9], ARGV[10], 'MEGADEAL', ARGV[2], { 'pool_empty' })
  return { 'pool_empty', ticket }
end

-- A waiter dropped while it was alive but slow (a paused process) keeps its place.
redis.call('ZADD', queue, ticket, ticket)
local rank = redis.call('ZRANK', queue, ticket)
local free_slots = max_concurrent - redis.call('ZCARD', slots)
local free_rate = rate - redis.call('ZCARD', window)

if rank < free_slots and rank < free_rate then
  local result = allocate_one(KEYS[1], KEYS[10], KEYS[2], ARGV[1], ARGV[2], 'MEGADEAL', now)
  leave_queue()
  audit_allocation(KEYS[9], ARGV[10], 'MEGADEAL', ARGV[2], result)
  if result[1] ~= 'ok' then
    return { 'pool_empty', ticket }
  end
  redis.call('ZADD', slots, now + lease_ms, ticket)
  redis.call('ZADD', window, now, ticket)
  local held = redis.call('ZCARD', slots)
  if held > tonumber(redis.call('GET', KEYS[8]) or '0') then
    redis.call('SET', KEYS[8], held)
  end
  return { 'ok', ticket, result[2], result[3], result[4], result[5], result[6] }
end

local wait, reason
if rank >= free_rate then
  -- Admission needs the (rank - free_rate + 1) oldest admissions to leave the window.
  reason = 'rate'
  local oldest = redis.call('ZRANGE', window, rank - free_rate, rank - free_rate, 'WITHSCORES')
  wait = oldest[2] and (tonumber(oldest[2]) + window_ms - now) or max_sleep_ms
else
  -- Slots are taken, or about to be by the waiters ahead: a leave wakes this ticket, and
  -- the first lease to end bounds the wait.
  reason = 'slot'
  local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
  wait = first[2] and (tonumber(first[2]) - now) or max_sleep_ms
end
wait = math.max(1, math.min(wait, max_sleep_ms))
redis.call('ZADD', alive, now + wait + grace_ms, ticket)
return { 'wait', ticket, wait, reason, rank }
