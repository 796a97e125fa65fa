-- redeem.lua: record the use of a coupon the user holds.
--
-- KEYS: coupon        the coupon hash
--       stats         the stats hash
--       audit_stream  the audit stream
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       code          the coupon's code (for the audit entry)
--       audit_cap     audit stream length cap (approximate)
--
-- Checks, in this order: the coupon exists, its type matches, the user holds an
-- allocation of it, that allocation is not redeemed yet, the coupon has not expired.
--
-- Returns {'ok', type, used, max_usages, redeemed_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "already_redeemed", "coupon_expired".
-- The holder field F_HOLDER .. user holds "<allocated_at ms>" and becomes
-- "<allocated_at ms>:<redeemed_at ms>" once redeemed.
-- Writes one audit entry: op=redeem, code, user_id, type, and used or error.
-- Uses now_ms() and audit() from lib.lua.

local coupon, stats, audit_stream = KEYS[1], KEYS[2], KEYS[3]
local user, expected, code, audit_cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holder = F_HOLDER .. user

local c = redis.call('HMGET', coupon, F_TYPE, F_EXPIRES, F_MAX_USAGES, holder)
local ctype, expires, max, held = c[1], c[2], c[3], c[4]

local function failed(error_code)
  audit(audit_stream, audit_cap, 'op', 'redeem', 'code', code, 'user_id', user,
    'type', ctype or expected, 'error', error_code)
  return { error_code }
end
if not ctype then
  return failed('coupon_not_found')
end
if expected ~= '' and expected ~= ctype then
  return failed('type_mismatch')
end
if not held then
  return failed('not_allocated')
end
if string.find(held, ':', 1, true) then
  return failed('already_redeemed')
end
local now = now_ms()
if tonumber(expires) <= now then
  return failed('coupon_expired')
end

redis.call('HSET', coupon, holder, held .. ':' .. now)
local used = redis.call('HINCRBY', coupon, F_USED, 1)
redis.call('HINCRBY', stats, ctype .. ':used', 1)
audit(audit_stream, audit_cap, 'op', 'redeem', 'code', code, 'user_id', user, 'type', ctype,
  'used', used)
return { 'ok', ctype, used, max, now }
