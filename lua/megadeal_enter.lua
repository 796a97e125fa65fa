-- megadeal_enter.lua: take a place in the MEGADEAL queue, or be admitted and allocated.
--
-- The limits: at most max_concurrent admitted requests hold a slot at once, and at most
-- rate admissions in any rolling window of window_ms. Waiters are admitted in ticket order
-- (first come, first served): a ticket is admitted only when its rank in the queue is
-- below both the free slots and the free places in the window, so no later ticket takes
-- capacity an earlier live one could use. A waiter not heard from for silent_ms (its
-- process paused or stalled: a live waiter calls at least every max_sleep_ms) leaves the
-- queue, so it holds nobody up; its ticket keeps its number, so when it calls again, if
-- its deadline has not passed, it takes its place back, ahead of every later ticket.
--
-- KEYS: available     the available set of MEGADEAL coupons
--       exhausted     coupons with no free usage (where allocate_one moves a coupon)
--       stats         the stats hash
--       audit_stream  the audit stream
--       queue         waiting tickets (sorted set: ticket -> its number, i.e. arrival order);
--                     a ticket is "<number>:<owner>", owner naming the app process
--       alive         waiters' deadlines (sorted set: ticket -> ms): a waiter past its
--                     deadline is dropped (a dead process's waiters go sooner: see
--                     megadeal_forget.lua)
--       slots         admitted tickets (sorted set: ticket -> lease end ms); a slot whose
--                     holder died frees itself when its lease ends
--       window        admissions in the window (sorted set: ticket -> admitted at ms)
--       heard         when each queued waiter last called (sorted set: ticket -> ms)
--       counter       the ticket counter (string)
--       high_water    the most slots held at once (string)
--       held, listing, draining, due  as in allocate.lua
--       record        (optional) the Idempotency-Key's record: claimed by the first call
--                     (owner: the ticket, lease: until the wait and a slot's lease end),
--                     given the reply on admission or pool_empty, dropped when the wait ends
-- ARGV: prefix        key prefix of coupon hashes
--       user          the user id
--       ctype         the coupon type (MEGADEAL; for the counters and the audit entry)
--       ticket        this request's ticket, or "" on its first call
--       owner         the app process's name (its Redis connections carry it)
--       max_concurrent, rate, window_ms  the limits: slots at once, admissions per window
--       lease_ms      how long an admitted slot is held at most
--       max_sleep_ms  longest sleep before calling again
--       silent_ms     a waiter not heard from for this long leaves the queue until it calls
--       wake_prefix   key prefix of wake lists (as in megadeal_leave.lua)
--       keep_ms       how long a wake-up is kept for its waiter
--       waited_ms     how long the request has waited so far, by the app's clock
--       max_wait_ms   how long it may wait in all: past that it is never admitted
--       audit_cap     audit stream length cap (approximate)
--       max_per_user  most coupons of the type a user may hold; 0: no limit
--       held_prefix, tracked_prefix, slot, hold_ms  as in allocate.lua
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- The type's due timers are carried out first, as allocate.lua does (any_available and
-- allocate_settled in lib.lua).
-- Returns {"ok", ticket, code, kind, value, expires_at ms, allocated_at ms, hold deadline ms
--          or "", metadata JSON or ""}: admitted,
--          allocated, and holding a slot until megadeal_leave.lua or the lease ends;
--      or {"pool_empty", ticket}: nothing to allocate (not queued);
--      or {"user_limit_reached", ticket}: the user holds the most allowed (not queued);
--      or, keyed, on the first call (no ticket): {"replay", stored reply as JSON},
--         {"idempotency_key_reused"}, {"idempotency_key_in_progress", ms left of its lease};
--      or {"expired", ticket, rank}: its wait is over (not queued, never admitted);
--      or {"wait", ticket, wait ms, reason, rank}: call again after wait ms at the latest;
--          reason "rate" (the window opens then: sleep) or "slot" (a slot frees at the
--          latest then; megadeal_leave.lua pushes to the ticket's wake list sooner); also
--          "slot" with 1 ms when the admitted allocation set aside many disabled coupons
--          (first_unheld in lib.lua): it keeps its place and calls again.
-- Writes an audit entry (as allocate.lua does) when it admits or answers pool_empty.
-- Uses now_ms(), any_available(), allocate_settled(), audit_allocation(), idem_lookup(),
-- idem_store() and wake_waiters() from lib.lua.

local k = { available = available, exhausted = exhausted, stats = stats, held = held, listing = listing,
    draining = draining, held_prefix = held_prefix, tracked_prefix = tracked_prefix, user = user, due = due,
    slot = slot, hold_ms = hold_ms }
local now = now_ms()
local deadline = now - waited_ms + max_wait_ms

-- Forget waiters past their deadline, leases that ended and admissions out of the window.
for _, late in ipairs(redis.call('ZRANGE', alive, '-inf', now, 'BYSCORE')) do
  redis.call('ZREM', queue, late)
  redis.call('ZREM', heard, late)
end
redis.call('ZREMRANGEBYSCORE', alive, '-inf', now)
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
redis.call('ZREMRANGEBYSCORE', window, '-inf', now - window_ms)
-- Waiters gone silent leave the queue (a batch per call), and those behind them move up.
local silent = redis.call('ZRANGE', heard, '-inf', now - silent_ms, 'BYSCORE', 'LIMIT', 0, SILENT_BATCH)
for _, quiet in ipairs(silent) do
  redis.call('ZREM', queue, quiet)
  redis.call('ZREM', heard, quiet)
end
if #silent > 0 then
  wake_waiters(queue, slots, window, wake_prefix, max_concurrent, rate, window_ms, keep_ms, now)
end

local found = idem_lookup(record, fp, ticket, now)
if found then
  if ticket ~= '' then  -- its claim was taken over (its lease ran out): it leaves
    redis.call('ZREM', queue, ticket)
    redis.call('ZREM', alive, ticket)
    redis.call('ZREM', heard, ticket)
  end
  return found
end
if ticket == '' then
  ticket = redis.call('INCR', counter) .. ':' .. owner
  if record then
    redis.call('HSET', record, R_FINGERPRINT, fp, R_OWNER, ticket, R_LEASE, deadline + lease_ms)
    redis.call('PEXPIRE', record, ttl_ms)
  end
end
local number = tonumber(string.match(ticket, '^(%d+):'))

local function leave_queue()
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', alive, ticket)
  redis.call('ZREM', heard, ticket)
end

if not any_available(k, ctype, now, audit_cap) then
  leave_queue()
  audit_allocation(audit_stream, audit_cap, ctype, user, { 'pool_empty' })
  idem_store(record, fp, ttl_ms, { 'pool_empty' })
  return { 'pool_empty', ticket }
end

-- Its place is its number: a waiter that was dropped (silent, or its process taken for
-- dead) and calls again still comes first.
redis.call('ZADD', queue, number, ticket)
redis.call('ZADD', heard, now, ticket)
local rank = redis.call('ZRANK', queue, ticket)
if now >= deadline then
  -- Never admitted past its wait, however late its process calls (a pause, a slow loop).
  leave_queue()
  if record then redis.call('DEL', record) end  -- a 429: not kept, a retry runs again
  return { 'expired', ticket, rank }
end
local free_slots = max_concurrent - redis.call('ZCARD', slots)
local free_rate = rate - redis.call('ZCARD', window)

if rank < free_slots and rank < free_rate then
  local result = allocate_settled(k, prefix, ctype, max_per_user, now, audit_cap)
  if result[1] == 'retry' then  -- disabled coupons set aside: it keeps its place, and calls again
    redis.call('ZADD', alive, deadline, ticket)
    return { 'wait', ticket, 1, 'slot', rank }
  end
  leave_queue()
  audit_allocation(audit_stream, audit_cap, ctype, user, result)
  idem_store(record, fp, ttl_ms, result)
  if result[1] ~= 'ok' then
    return { result[1], ticket }
  end
  redis.call('ZADD', slots, now + lease_ms, ticket)
  redis.call('ZADD', window, now, ticket)
  local held = redis.call('ZCARD', slots)
  if held > tonumber(redis.call('GET', high_water) or '0') then
    redis.call('SET', high_water, held)
  end
  return { 'ok', ticket, result[2], result[3], result[4], result[5], result[6], result[7], result[8] }
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
wait = math.max(1, math.min(wait, max_sleep_ms, deadline - now))
-- Its place is kept until its deadline, whether or not its process calls again before:
-- a paused process's waiters keep their turn (they are still waiting, just slowly).
redis.call('ZADD', alive, deadline, ticket)
return { 'wait', ticket, wait, reason, rank }
