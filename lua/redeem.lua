-- redeem.lua: record the use of a coupon the user holds.
--
-- KEYS[1]  the coupon hash
-- KEYS[2]  stats hash
-- KEYS[3]  audit stream
-- ARGV[1]  user id
-- ARGV[2]  expected coupon type, or "" to accept any type
-- ARGV[3]  the coupon's code (for the audit entry)
-- ARGV[4]  audit stream length cap (approximate)
--
-- Checks, in this order: the coupon exists, its type matches, the user holds an
-- allocation of it, that allocation is not redeemed yet, the coupon has not expired.
--
-- Returns {'ok', type, used, max_usages, redeemed_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "already_redeemed", "coupon_expired".
-- The holder field "u:<user>" holds "<allocated_at ms>" and becomes
-- "<allocated_at ms>:<redeemed_at ms>" once redeemed.
-- Writes one audit entry: op=redeem, code, user_id, type, and used or error.
-- Uses now_ms() and audit() from lib.lua.

local c = redis.call('HMGET', KEYS[1], 'type', 'exp', 'max', 'u:' .. ARGV[1])
local ctype, expires, max, held = c[1], c[2], c[3], c[4]

local function failed(error_code)
  audit(KEYS[3], ARGV[4], 'op', 'redeem', 'code', ARGV[3], 'user_id', ARGV[1],
    'type', ctype or ARGV[2], 'error', error_code)
  return { error_code }
end
if not ctype then
  return failed('coupon_not_found')
end
if ARGV[2] ~= '' and ARGV[2] ~= ctype then
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

redis.call('HSET', KEYS[1], 'u:' .. ARGV[1], held .. ':' .. now)
local used = redis.call('HINCRBY', KEYS[1], 'used', 1)
redis.call('HINCRBY', KEYS[2], ctype .. ':used', 1)
audit(KEYS[3], ARGV[4], 'op', 'redeem', 'code', ARGV[3], 'user_id', ARGV[1], 'type', ctype,
  'used', used)
return { 'ok', ctype, used, max, now }
