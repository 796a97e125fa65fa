-- release.lua: give an allocated, unredeemed usage back to the pool (the order behind it
-- was cancelled).
--
-- KEYS: coupon        the coupon hash
--       exhausted     coupons with no free usage
--       stats         the stats hash
--       audit_stream  the audit stream
--       record        (optional) the Idempotency-Key's record
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       code          the coupon's code
--       audit_cap     audit stream length cap (approximate)
--       available_prefix  key prefix of the available sets ({ns}:avail:, then the type)
--       draining_prefix   key prefix of the draining sets ({ns}:draining:, then the type)
--       held_prefix   key prefix of the users' held sets ({ns}:held:, then "<TYPE>:<user>")
--       listing_prefix  key prefix of the users' listings ({ns}:user:, then "<TYPE>:<user>")
--       tracked_prefix  key prefix of the coupons' tracked sets ({ns}:trk:)
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- The user stops holding the coupon (and may be allocated it again later); its allocated
-- count drops by one, and a coupon that had no free usage goes back to its available set
-- if it has not expired (an expired one stays out, for the purge); a draining one (see
-- lib.lua) simply stops draining. Counted per type as
-- "<TYPE>:released"; "<TYPE>:allocated" counts allocations net of releases.
-- Returns {'ok', type, allocated, max_usages, released_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "already_redeemed";
--      with a record: {"replay", stored reply as JSON}, {"idempotency_key_reused"}.
-- Writes one audit entry: op=release, code, user_id, type, and allocated or error.
-- Uses now_ms(), holding(), idem_lookup() and conclude() from lib.lua.

local now = now_ms()

local found = idem_lookup(record, fp, '', now)
if found then return found end

local a = { op = 'release', stream = audit_stream, cap = audit_cap, code = code, user = user, record = record,
  fp = fp, ttl_ms = ttl_ms }

local c, failure = holding(coupon, user, expected)
if failure then
  return conclude(a, { failure }, c.type or expected, 'error', failure)
end
if c.redeemed_at then
  return conclude(a, { 'already_redeemed' }, c.type, 'error', 'already_redeemed')
end

redis.call('HDEL', coupon, c.holder)
local allocated = redis.call('HINCRBY', coupon, F_ALLOCATED, -1)
local draining = draining_prefix .. c.type
if redis.call('ZREM', draining, code) == 0 and c.allocated >= tonumber(c.max) and c.expires > now then
  redis.call('ZREM', exhausted, code)
  redis.call('ZADD', available_prefix .. c.type, c.expires, code)
end
redis.call('ZREM', held_prefix .. c.type .. ':' .. user, code)
redis.call('SREM', tracked_prefix .. code, user)
redis.call('ZREM', listing_prefix .. c.type .. ':' .. user, code)
redis.call('HINCRBY', stats, c.type .. ':allocated', -1)
redis.call('HINCRBY', stats, c.type .. ':released', 1)
return conclude(a, { 'ok', c.type, allocated, c.max, now }, c.type, 'allocated', allocated)
