-- lib.lua: helpers shared by the functions. The library (coupon_pool/pool/functions.py)
-- puts this file after the F_* and R_* constants (the field names of keys.py) and before
-- every function, so each can call these; Redis runs it once, when the library loads.

-- Redis server time in milliseconds since the epoch: one clock for every app process.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The per-user structure that keeps allocation cost independent of what a user holds.
-- `held` ({ns}:held:<TYPE>:<user>, code -> expires_at ms) lists coupons of the type that
-- the user holds and that are in `available`, with the same scores. In the order both sets
-- share (score, then code) it is a subset of `available`: it may lack coupons the user
-- holds, never list one `available` lacks. So, once `skip` coupons of `available` known
-- not to be listed are set aside, the first coupon the user may get is at the first rank
-- k where available[a0 + skip + k] differs from held[h0 + k] (a0, h0: the ranks of the
-- first unexpired entry of each); past it the two never agree again. That rank is found by
-- comparing the first pair, then the last, then by bisection: a few O(log n) calls
-- whatever the user holds.
-- A coupon leaves `available` only once no held set lists it: its tracked set
-- ({ns}:trk:<code>) names the users whose held set does. When its last usage goes, the
-- allocation cleans up to DRAIN_NOW of them at once; a coupon with more holders is
-- "draining" ({ns}:draining:<TYPE>): it stays in `available` though it has no free usage
-- (searches skip it), and each later allocation of the type cleans DRAIN_BATCH more, then
-- moves it to `exhausted`. A user's first TRACK_FROM coupons of a type are not listed
-- (searches skip the few a user holds), so a coupon of many usages given to many light
-- users costs no tracking; nor is a coupon that comes back to the pool (a release) put
-- back into its holders' held sets: the holder's next search meets it and lists it.
local HELD_EXPIRED_BATCH = 64  -- expired entries removed from a held set per call
local TRACK_FROM = 8           -- coupons of a type a user holds before any is listed
local DRAIN_NOW = 64           -- holders cleaned when a coupon's last usage goes
local DRAIN_BATCH = 64         -- holders of a draining coupon cleaned per later allocation
local SILENT_BATCH = 100       -- silent MEGADEAL waiters taken out of the queue per call
local TIDY_IN_ALLOCATION = 64  -- disabled coupons an allocation sets aside before it answers "retry"

-- Batches (campaigns). A coupon's batch (F_BATCH) may have rules in the coupon's slot: the
-- hash slot .. K_RULES maps the batch to "d" (disabled), "c<n>" (at most n redemptions in
-- all), or "dc<n>"; a batch without rules has no field. Each slot counts per batch, in
-- slot .. K_BATCH_STATS .. batch: created, usages (max usages of the coupons not purged),
-- allocated, used, purged, and per type live:<TYPE> (coupons not purged) and off:<TYPE>
-- (those disabled one by one). Whether the batch is disabled, and its cap (or nil).
local function batch_rules(slot, batch)
  if not batch then return false, nil end
  local r = redis.call('HGET', slot .. K_RULES, batch)
  if not r then return false, nil end
  return string.sub(r, 1, 1) == 'd', tonumber(string.match(r, 'c(%d+)'))
end

-- An enabled coupon that a disabled state set aside goes back where an allocation finds it:
-- out of `exhausted` into its available set, or out of `draining` (it is still in the
-- available set), if it has a free usage (`allocated` < `max`) and has not expired. (A
-- scheduled coupon is in neither: its start puts it in the pool.)
local function put_back(slot, code, ctype, allocated, max, expires, now)
  if tonumber(allocated) >= tonumber(max) or expires <= now then return end
  if redis.call('ZREM', slot .. K_DRAINING .. ctype, code) == 0
      and redis.call('ZREM', slot .. K_EXHAUSTED, code) == 1 then
    redis.call('ZADD', slot .. K_AVAILABLE .. ctype, expires, code)
  end
end

-- Add `n` to the batch's counter `name` in the slot (nothing for a coupon without a batch).
local function batch_count(slot, batch, name, n)
  if batch then redis.call('HINCRBY', slot .. K_BATCH_STATS .. batch, name, n) end
end

local function rank_member(set, rank)
  local m = redis.call('ZRANGE', set, rank, rank, 'WITHSCORES')
  return m[1], tonumber(m[2])
end

-- The first k in [lo, n] where available[a + k] ~= held[h0 + k], or n; all k < lo match.
local function first_mismatch(available, a, held, h0, lo, n)
  local function same(k)
    return rank_member(available, a + k) == rank_member(held, h0 + k)
  end
  if lo >= n or not same(lo) then
    return lo
  end
  if same(n - 1) then
    return n
  end
  local good, bad = lo, n - 1
  while bad - good > 1 do
    local mid = math.floor((good + bad) / 2)
    if same(mid) then good = mid else bad = mid end
  end
  return bad
end

-- Take `code` out of the held sets of up to `budget` of the users its tracked set names;
-- true once none is left (then its tracked set is gone).
local function untrack(k, code, budget)
  local tracked = k.tracked_prefix .. code
  for _, user in ipairs(redis.call('SPOP', tracked, budget)) do
    redis.call('ZREM', k.held_prefix .. user, code)
  end
  return redis.call('EXISTS', tracked) == 0
end

-- Move a coupon with no free usage from `available` to `exhausted` (its expiry, `score`).
local function exhaust(k, code, score)
  redis.call('ZREM', k.available, code)
  redis.call('ZADD', k.exhausted, score, code)
end

-- Clean DRAIN_BATCH holders of the type's first draining coupon, and finish it if done.
local function drain(k)
  local first = redis.call('ZRANGE', k.draining, 0, 0, 'WITHSCORES')
  if first[1] and untrack(k, first[1], DRAIN_BATCH) then
    redis.call('ZREM', k.draining, first[1])
    exhaust(k, first[1], first[2])
  end
end

-- Coupon `code`'s discount kind and value, expiry, max usages, allocated count, holder
-- field, metadata, batch and disabled flag, if `holder` (its holder field) does not hold it;
-- nil if it does. A hold that lapsed ("<at>x<deadline>") holds it no more.
local function unheld(prefix, code, holder)
  local c = redis.call('HMGET', prefix .. code, F_DISCOUNT_KIND, F_DISCOUNT_VALUE, F_EXPIRES, F_MAX_USAGES,
    F_ALLOCATED, holder, F_METADATA, F_BATCH, F_DISABLED)
  if c[6] and not string.find(c[6], 'x', 1, true) then return nil end
  return c
end

-- Whether a coupon read by unheld() is disabled, on its own or with its batch.
local function switched_off(slot, c)
  return c[9] ~= false or (c[8] ~= false and (batch_rules(slot, c[8])))
end

-- A disabled coupon met in `available` leaves it for `exhausted` (`score`: its expiry), as a
-- coupon with no free usage does: at once if no held set lists it (true), else through
-- `draining` (false: it stays at its rank until drained). Enabled again, the batch's tidy
-- (batch_tidy.lua) or a release puts it back.
local function set_aside(k, code, score)
  if untrack(k, code, DRAIN_NOW) then
    exhaust(k, code, score)
    return true
  end
  redis.call('ZADD', k.draining, score, code)
  return false
end

-- The first coupon in `available` (unexpired at `now`) with a free usage that the user
-- does not hold and that is not disabled, and its fields (see unheld); nil when there is
-- none, or nil and "retry" once it set aside TIDY_IN_ALLOCATION disabled coupons (the
-- caller calls again: each call's work stays bounded however many were disabled at once). `listed`: how many
-- coupons of the type the user's listing holds. A user whose listing is empty holds no
-- coupon of the type, so their held set (at most stale, expired entries) is not read.
local function first_unheld(k, prefix, holder, now, listed)
  local available, held = k.available, k.held
  local draining = redis.call('ZCARD', k.draining) > 0
  if draining then drain(k) end
  local n, h0 = 0, 0
  if listed > 0 then n = redis.call('ZCARD', held) end
  if n > 0 then
    h0 = redis.call('ZCOUNT', held, '-inf', now)
    if h0 > 0 then  -- the user's expired entries go, a batch per call
      local dropped = math.min(h0, HELD_EXPIRED_BATCH)
      redis.call('ZREMRANGEBYRANK', held, 0, dropped - 1)
      n, h0 = n - dropped, h0 - dropped
    end
    n = n - h0
  end
  if n == 0 and not draining then  -- nothing listed: the first coupon, as a rule
    local first = redis.call('ZRANGE', available, '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1)[1]
    if not first then return nil end
    local c = unheld(prefix, first, holder)
    if c and not switched_off(k.slot, c) then return first, c end
  end
  local a0 = redis.call('ZCOUNT', available, '-inf', now)
  local skip, i, tidied = 0, 0, 0
  local listable = listed >= TRACK_FROM
  while true do
    i = first_mismatch(available, a0 + skip, held, h0, i, n)
    local code, score = rank_member(available, a0 + skip + i)
    if not code then return nil end
    local spent = draining and redis.call('ZSCORE', k.draining, code)
    local c = not spent and unheld(prefix, code, holder)
    if c and switched_off(k.slot, c) then
      if tidied == TIDY_IN_ALLOCATION then return nil, 'retry' end
      tidied = tidied + 1
      if not set_aside(k, code, score) then skip = skip + 1 end  -- else the next is at its rank
    elseif c then
      return code, c
    elseif spent then
      skip = skip + 1  -- no free usage: set aside
    elseif listable then  -- held but not listed: list it
      redis.call('ZADD', held, score, code)
      redis.call('SADD', k.tracked_prefix .. code, k.user)
      n, i = n + 1, i + 1
    else
      skip = skip + 1  -- one of the few a light user holds
    end
  end
end

-- Reserve one usage of the first-expiring coupon in `available` with a free usage that
-- the user does not hold yet: its holder field (allocated_at) and its allocated count in
-- one HSET, counted in `stats` under "<ctype>:allocated" and in the user's `listing` of
-- the type (code -> allocated_at ms). Coupon hashes are prefix .. code.
-- A coupon whose last usage this reserves leaves `available` for `exhausted` (same score,
-- its expiry) once no held set lists it, so each coupon is in exactly one of the sorted
-- sets for the purge to find; one with usages left joins the user's held set (from the
-- user's TRACK_FROM-th coupon of the type on). `max_per_user` > 0 caps the coupons of the
-- type a user holds at once.
-- With `k.hold_ms` > 0 the usage is held, not given for good: its holder field is
-- "<now>h<deadline>", the deadline (now + hold_ms, at most the coupon's expiry) in the
-- type's timers (`k.due`) under "<code> <user>", counted in "<ctype>:held"; redeem confirms
-- it, release ends it, and settle() gives it back at the deadline.
-- `k` names the keys: available, exhausted, stats, held, listing, draining, due, held_prefix
-- ({ns}:held:<TYPE>:), tracked_prefix ({ns}:trk:), slot ({ns}:), the user and hold_ms.
-- Returns {"ok", code, discount kind, discount value, expires_at ms, allocated_at ms,
--          hold deadline ms or "", metadata JSON or ""}
--      or {"pool_empty"} or {"user_limit_reached"} or {"retry"} (see first_unheld).
local function allocate_one(k, prefix, ctype, max_per_user, now)
  local listed = redis.call('ZCARD', k.listing)
  if max_per_user > 0 and listed >= max_per_user then
    return { 'user_limit_reached' }
  end
  local holder = F_HOLDER .. k.user
  local code, c = first_unheld(k, prefix, holder, now, listed)
  if not code then
    return { c or 'pool_empty' }
  end
  local allocated = tonumber(c[5]) + 1
  local state, deadline = now, ''
  if k.hold_ms > 0 then
    deadline = math.min(now + k.hold_ms, tonumber(c[3]))
    state = now .. 'h' .. deadline
    redis.call('ZADD', k.due, deadline, code .. ' ' .. k.user)
    redis.call('HINCRBY', k.stats, ctype .. ':held', 1)
  end
  if c[6] then  -- a hold of this user's that lapsed: it is theirs again
    redis.call('ZREM', k.slot .. K_LAPSED .. ctype .. ':' .. k.user, code)
  end
  redis.call('HSET', prefix .. code, holder, state, F_ALLOCATED, allocated)
  listed = listed + redis.call('ZADD', k.listing, now, code)
  if allocated >= tonumber(c[4]) then
    if untrack(k, code, DRAIN_NOW) then
      exhaust(k, code, c[3])
    else
      redis.call('ZADD', k.draining, c[3], code)
    end
  elseif listed > TRACK_FROM then
    redis.call('ZADD', k.held, c[3], code)
    redis.call('SADD', k.tracked_prefix .. code, k.user)
  end
  redis.call('HINCRBY', k.stats, ctype .. ':allocated', 1)
  batch_count(k.slot, c[8] or nil, N_ALLOCATED, 1)
  return { 'ok', code, c[1], c[2], c[3], now, deadline, c[7] or '' }
end

-- Idempotency records ({ns}:idem:<scope>:<key digest>), a hash: "fp" the request's
-- fingerprint, "reply" the operation's script reply as JSON once it has one, and while a
-- multi-call operation runs (a MEGADEAL wait, an upload) "owner" and "lease" (ms).
-- What a keyed call finds: nil (run it), or the reply to give instead.
local function idem_lookup(record, fp, owner, now)
  if not record then return nil end
  local r = redis.call('HMGET', record, R_FINGERPRINT, R_REPLY, R_OWNER, R_LEASE)
  if not r[1] then return nil end
  if r[1] ~= fp then return { 'idempotency_key_reused' } end
  if r[2] then return { 'replay', r[2] } end
  if r[3] and r[3] ~= owner and tonumber(r[4]) > now then
    return { 'idempotency_key_in_progress', tonumber(r[4]) - now }
  end
  return nil
end

-- Keep `reply` as the answer to the keyed request, for ttl_ms.
local function idem_store(record, fp, ttl_ms, reply)
  if not record then return end
  redis.call('HSET', record, R_FINGERPRINT, fp, R_REPLY, cjson.encode(reply))
  redis.call('HDEL', record, R_OWNER, R_LEASE)
  redis.call('PEXPIRE', record, ttl_ms)
end

-- A holder field's value: allocated_at ms, then its mark and a time: "" (allocated), ":"
-- (redeemed at), "h" (held until), "x" (held until, and lapsed). "<at>h<deadline>:<at>" is
-- a hold redeemed by a version of the service that knew no holds (two versions may share a
-- Redis while one replaces the other): redeemed. Any other value is an error, not a guess.
local function holder_state(value)
  local i = string.find(value, '%D')
  if not i and value ~= '' then return value, '', '' end  -- allocated for good: the common case
  local at, mark, time = string.match(value, '^(%d+)([:hx])(%d+)$')
  if at then return at, mark, time end
  at, time = string.match(value, '^(%d+)h%d+:(%d+)$')
  if at then return at, ':', time end
  error('malformed holder record: ' .. value)
end

-- The user's allocation of the coupon hash `coupon`, as a table: type, expires, max,
-- allocated, holder (its field name), allocated_at, redeemed_at (nil while unredeemed),
-- hold (its deadline ms while held, nil otherwise); or, second, the error:
-- "coupon_not_found", "type_mismatch" (`expected` is a type, or "" for any),
-- "not_allocated", "hold_expired" (a hold past its deadline: c.hold is then its deadline,
-- or nil once it lapsed). The first value always has the type when the coupon exists.
local function holding(coupon, user, expected, now)
  local holder = F_HOLDER .. user
  local r = redis.call('HMGET', coupon, F_TYPE, F_EXPIRES, F_MAX_USAGES, F_ALLOCATED, holder, F_BATCH)
  local c = { type = r[1], holder = holder, batch = r[6] or nil }
  if not r[1] then return c, 'coupon_not_found' end
  if expected ~= '' and expected ~= r[1] then return c, 'type_mismatch' end
  if not r[5] then return c, 'not_allocated' end
  c.expires, c.max, c.allocated = tonumber(r[2]), r[3], tonumber(r[4])
  local at, mark, time = holder_state(r[5])
  c.allocated_at = at
  if mark == ':' then c.redeemed_at = time end
  if mark == 'x' then return c, 'hold_expired' end
  if mark == 'h' then
    c.hold = tonumber(time)
    if c.hold <= now then return c, 'hold_expired' end
  end
  return c, nil
end

-- The rules a redemption of coupon hash `coupon` by `user` must pass now, shared by
-- redeem.lua and validate.lua so the two cannot disagree. Returns the coupon as a table
-- (type, expires, max, kind, value, starts, metadata, holder: the field name, and from the
-- holder field: allocated_at, mark and time as holder_state() reads them; batch, and cap:
-- its batch's cap of redemptions or nil), then the error or nil. Checked in this order:
-- "coupon_not_found", "type_mismatch" (`expected` a type, or "" for any), "coupon_disabled"
-- (on its own or with its batch, in the slot `slot`), "coupon_not_yet_valid" (its start is
-- ahead), "not_allocated", "already_redeemed", "hold_expired" (a hold past its deadline),
-- "coupon_expired". The cap is the caller's to apply.
local function redeemable(coupon, user, expected, now, slot)
  local holder = F_HOLDER .. user
  local r = redis.call('HMGET', coupon, F_TYPE, F_EXPIRES, F_MAX_USAGES, holder, F_STARTS, F_DISCOUNT_KIND,
    F_DISCOUNT_VALUE, F_METADATA, F_BATCH, F_DISABLED)
  local c = { type = r[1], expires = r[2], max = r[3], holder = holder, starts = r[5], kind = r[6], value = r[7],
    metadata = r[8], batch = r[9] or nil }
  if not r[1] then return c, 'coupon_not_found' end
  if expected ~= '' and expected ~= r[1] then return c, 'type_mismatch' end
  local off
  off, c.cap = batch_rules(slot, c.batch)
  if off or r[10] then return c, 'coupon_disabled' end
  if r[5] and tonumber(r[5]) > now then return c, 'coupon_not_yet_valid' end
  if not r[4] then return c, 'not_allocated' end
  c.allocated_at, c.mark, c.time = holder_state(r[4])
  if c.mark == ':' then return c, 'already_redeemed' end
  if c.mark == 'x' or (c.mark == 'h' and tonumber(c.time) <= now) then return c, 'hold_expired' end
  if tonumber(r[2]) <= now then return c, 'coupon_expired' end
  return c, nil
end

-- Append one entry to the audit stream, trimmed to about `maxlen` entries. Called by the
-- script whose operation it records, so the trail can never disagree with the data.
local function audit(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end

-- The end of a one-coupon change by a user (release.lua, rollback.lua): its audit entry
-- (op, code, user_id, type, then `...`) and, when keyed, its Idempotency-Key record.
-- `a` names: op, stream, cap (audit), code, user, record, fp, ttl_ms. Returns `reply`.
local function conclude(a, reply, ctype, ...)
  audit(a.stream, a.cap, 'op', a.op, 'code', a.code, 'user_id', a.user, 'type', ctype, ...)
  idem_store(a.record, a.fp, a.ttl_ms, reply)
  return reply
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

-- Holds and starts. Each type has its timers in a slot ({ns}:due:<TYPE>, a sorted set): a
-- hold, "<code> <user>" -> its deadline ms, and a scheduled coupon (uploaded with a start
-- ahead: in no available set yet), "<code>" -> its starts_at ms. settle() carries out
-- those that are due: the allocation of the type does a few first (so a coupon whose hold
-- ended or whose start came is allocatable at once, whatever a sweep does), stats and the
-- purge more, and the app's sweep (SETTLE_INTERVAL_S) the rest, a batch per call.
local SETTLE_IN_ALLOCATION = 16  -- timers an allocation carries out before it searches
local SETTLE_ROUNDS = 4  -- batches an allocation settles at most while it finds nothing

-- The keys of type `ctype` in the slot whose keys start with `slot` ("{ns}:").
local function type_keys(slot, ctype)
  return { slot = slot, ctype = ctype, due = slot .. K_DUE .. ctype, available = slot .. K_AVAILABLE .. ctype,
    draining = slot .. K_DRAINING .. ctype, exhausted = slot .. K_EXHAUSTED, stats = slot .. K_STATS,
    audit = slot .. K_AUDIT, prefix = slot .. K_COUPON, held = slot .. K_HELD .. ctype .. ':',
    listing = slot .. K_LISTING .. ctype .. ':', lapsed = slot .. K_LAPSED .. ctype .. ':',
    tracked = slot .. K_TRACKED }
end

-- The end of `user`'s allocation of `code` (`t`: type_keys): one usage back to the pool, as
-- release.lua gives it. `c` has the coupon's expires (a number), max and allocated (the
-- count before). Its holder field is left to the caller. Returns the usages allocated now.
local function give_back(t, code, user, c, now)
  local allocated = redis.call('HINCRBY', t.prefix .. code, F_ALLOCATED, -1)
  local b = redis.call('HMGET', t.prefix .. code, F_BATCH, F_RETIRED)
  if not b[2] then batch_count(t.slot, b[1] or nil, N_ALLOCATED, -1) end  -- the purge counted a retired one out
  if redis.call('ZREM', t.draining, code) == 0 and c.allocated >= tonumber(c.max) and c.expires > now then
    redis.call('ZREM', t.exhausted, code)
    redis.call('ZADD', t.available, c.expires, code)
  end
  redis.call('ZREM', t.held .. user, code)
  redis.call('SREM', t.tracked .. code, user)
  redis.call('ZREM', t.listing .. user, code)
  redis.call('HINCRBY', t.stats, t.ctype .. ':allocated', -1)
  return allocated
end

-- A hold that is no more (confirmed, released or lapsed) leaves the timers and the count
-- (the count only with its timer: it counts the timers).
local function unhold(t, code, user)
  if redis.call('ZREM', t.due, code .. ' ' .. user) == 1 then
    redis.call('HINCRBY', t.stats, t.ctype .. ':held', -1)
  end
end

-- `user`'s hold of `code` ends unconfirmed: the usage goes back to the pool as a release
-- gives it, the holder field becomes "<at>x<deadline>" (redeem answers hold_expired), the
-- user's lapsed listing gets it (GET /v1/users/{id}/coupons shows it), counted in
-- "<TYPE>:hold_expired", with an audit entry (op=hold_expired). Nothing if it is not a
-- hold (any more): its coupon purged, say.
local function lapse(t, code, user, now, audit_cap)
  unhold(t, code, user)
  local coupon = t.prefix .. code
  local holder = F_HOLDER .. user
  local r = redis.call('HMGET', coupon, F_EXPIRES, F_MAX_USAGES, F_ALLOCATED, holder)
  if not r[4] then return end
  local at, mark, deadline = holder_state(r[4])
  if mark ~= 'h' then return end
  local lapsed = at .. 'x' .. deadline
  redis.call('HSET', coupon, holder, lapsed)
  give_back(t, code, user, { expires = tonumber(r[1]), max = r[2], allocated = tonumber(r[3]) }, now)
  redis.call('ZADD', t.lapsed .. user, at, code)
  redis.call('HINCRBY', t.stats, t.ctype .. ':hold_expired', 1)
  audit(t.audit, audit_cap, 'op', 'hold_expired', 'code', code, 'user_id', user, 'type', t.ctype)
end

-- A scheduled coupon's start has come: it joins its available set (an expired one too,
-- for the purge to find).
local function start(t, code)
  redis.call('HINCRBY', t.stats, t.ctype .. ':scheduled', -1)
  local expires = redis.call('HGET', t.prefix .. code, F_EXPIRES)
  if expires then redis.call('ZADD', t.available, expires, code) end
end

-- Carry out up to `budget` of the due timers of type `ctype` (`due` its timers, `slot` the
-- slot's prefix), oldest first. Returns how many it carried out.
local function settle(slot, ctype, due, now, budget, audit_cap)
  local members = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, budget)
  if #members == 0 then return 0 end
  local t = type_keys(slot, ctype)
  for _, member in ipairs(members) do
    local space = string.find(member, ' ', 1, true)
    if space then
      lapse(t, string.sub(member, 1, space - 1), string.sub(member, space + 1), now, audit_cap)
    else
      redis.call('ZREM', due, member)
      start(t, member)
    end
  end
  return #members
end

-- allocate_one() after the type's due timers: a batch of SETTLE_IN_ALLOCATION first; and while
-- the search finds nothing and a batch was full (more may be due: holds of coupons this user
-- holds, or of expired ones, give nothing back to them), another, up to SETTLE_ROUNDS. So a
-- hold that ended or a start that came is allocatable at once, whatever a sweep does, unless
-- SETTLE_IN_ALLOCATION * SETTLE_ROUNDS timers that free nothing for this user fell due first.
local function allocate_settled(k, prefix, ctype, max_per_user, now, audit_cap)
  local result
  for _ = 1, SETTLE_ROUNDS do
    local settled = settle(k.slot, ctype, k.due, now, SETTLE_IN_ALLOCATION, audit_cap)
    result = allocate_one(k, prefix, ctype, max_per_user, now)
    if result[1] ~= 'pool_empty' or settled < SETTLE_IN_ALLOCATION then break end
  end
  return result
end

-- Settle the type's due timers while it has no available coupon and a batch was full (as
-- allocate_settled does): the MEGADEAL gate's test for an empty pool. True if it has one.
local function any_available(k, ctype, now, audit_cap)
  for _ = 1, SETTLE_ROUNDS do
    local settled = settle(k.slot, ctype, k.due, now, SETTLE_IN_ALLOCATION, audit_cap)
    if redis.call('ZCOUNT', k.available, '(' .. now, '+inf') > 0 then return true end
    if settled < SETTLE_IN_ALLOCATION then return false end
  end
  return false
end
