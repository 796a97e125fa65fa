-- redeem.lua: record the use of a coupon the user holds.
--
-- KEYS: coupon        the coupon hash
--       stats         the stats hash
--       audit_stream  the audit stream
--       record        (optional) the Idempotency-Key's record
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       code          the coupon's code (for the audit entry)
--       audit_cap     audit stream length cap (approximate)
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- Checks, in this order: the coupon exists, its type matches, the user holds an
-- allocation of it, that allocation is not redeemed yet, the coupon has not expired.
--
-- Returns {'ok', type, used, max_usages, redeemed_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "already_redeemed", "coupon_expired";
--      with a record: {"replay", stored reply as JSON}, {"idempotency_key_reused"}.
-- The holder field F_HOLDER .. user holds "<allocated_at ms>" and becomes
-- "<allocated_at ms>:<redeemed_at ms>" once redeemed.
-- Writes one audit entry: op=redeem, code, user_id, type, and used or error.
-- Uses now_ms(), audit(), idem_lookup() and idem_store() from lib.lua.

if record then
  local found = idem_lookup(record, fp, '', now_ms())
  if found then return found end
end

-- As holding() in lib.lua does, inline: this is the hot path.
local holder = F_HOLDER .. user
local c = redis.call('HMGET', coupon, F_TYPE, F_EXPIRES, F_MAX_USAGES, holder)
local ctype, expires, max, held = c[1], c[2], c[3], c[4]
local failure
if not ctype then
  failure = 'coupon_not_found'
elseif expected ~= '' and expected ~= ctype then
  failure = 'type_mismatch'
elseif not held then
  failure = 'not_allocated'
elseif string.find(held, ':', 1, true) then
  failure = 'already_redeemed'
end
local now = now_ms()
if not failure and tonumber(expires) <= now then
  failure = 'coupon_expired'
end
if failure then
  audit(audit_stream, audit_cap, 'op', 'redeem', 'code', code, 'user_id', user, 'type', ctype or expected,
    'error', failure)
  if record then idem_store(record, fp, ttl_ms, { failure }) end
  return { failure }
end

redis.call('HSET', coupon, holder, held .. ':' .. now)
local used = redis.call('HINCRBY', coupon, F_USED, 1)
redis.call('HINCRBY', stats, ctype .. ':used', 1)
audit(audit_stream, audit_cap, 'op', 'redeem', 'code', code, 'user_id', user, 'type', ctype, 'used', used)
local reply = { 'ok', ctype, used, max, now }
if record then idem_store(record, fp, ttl_ms, reply) end
return reply
