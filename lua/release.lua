-- release.lua: give an allocated, unredeemed usage back to the pool (the order behind it
-- was cancelled).
--
-- KEYS: coupon        the coupon hash
--       stats         the stats hash
--       audit_stream  the audit stream
--       record        (optional) the Idempotency-Key's record
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       code          the coupon's code
--       audit_cap     audit stream length cap (approximate)
--       slot          the prefix of the slot's keys ({ns}:): the type's keys are built from it
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- The user stops holding the coupon (and may be allocated it again later); its allocated
-- count drops by one, and a coupon that had no free usage goes back to its available set
-- if it has not expired (an expired one stays out, for the purge); a draining one (see
-- lib.lua) simply stops draining. A hold ends early; one past its deadline is given back
-- as settle() would, and the answer is hold_expired. Counted per type as
-- "<TYPE>:released"; "<TYPE>:allocated" counts allocations net of releases.
-- Returns {'ok', type, allocated, max_usages, released_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "already_redeemed", "hold_expired";
--      with a record: {"replay", stored reply as JSON}, {"idempotency_key_reused"}.
-- Writes one audit entry: op=release, code, user_id, type, and allocated or error.
-- Uses now_ms(), holding(), type_keys(), give_back(), unhold(), lapse(), idem_lookup() and
-- conclude() from lib.lua.

local now = now_ms()

local found = idem_lookup(record, fp, '', now)
if found then return found end

local a = { op = 'release', stream = audit_stream, cap = audit_cap, code = code, user = user, record = record,
  fp = fp, ttl_ms = ttl_ms }

local c, failure = holding(coupon, user, expected, now)
if failure then
  if failure == 'hold_expired' and c.hold then lapse(type_keys(slot, c.type), code, user, now, audit_cap) end
  return conclude(a, { failure }, c.type or expected, 'error', failure)
end
if c.redeemed_at then
  return conclude(a, { 'already_redeemed' }, c.type, 'error', 'already_redeemed')
end

local t = type_keys(slot, c.type)
redis.call('HDEL', coupon, c.holder)
if c.hold then unhold(t, code, user) end
local allocated = give_back(t, code, user, c, now)
redis.call('HINCRBY', stats, c.type .. ':released', 1)
return conclude(a, { 'ok', c.type, allocated, c.max, now }, c.type, 'allocated', allocated)
