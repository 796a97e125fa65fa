-- redeem.lua: record the use of a coupon the user holds.
--
-- KEYS[1]  the coupon hash
-- KEYS[2]  stats hash
-- ARGV[1]  user id
-- ARGV[2]  expected coupon type, or "" to accept any type
--
-- Checks, in this order: the coupon exists, its type matches, the user holds an
-- allocation of it, that allocation is not redeemed yet, the coupon has not expired.
--
-- Returns {'ok', type, used, max_usages, redeemed_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "already_redeemed", "coupon_expired".
-- The holder field "u:<user>" holds "<allocated_at ms>" and becomes
-- "<allocated_at ms>:<redeemed_at ms>" once redeemed.
-- Uses now_ms() from lib.lua.

local c = redis.call('HMGET', KEYS[1], 'type', 'exp', 'max', 'u:' .. ARGV[1])
local ctype, expires, max, held = c[1], c[2], c[3], c[4]
if not ctype then
  return { 'coupon_not_found' }
end
if ARGV[2] ~= '' and ARGV[2] ~= ctype then
  return { 'type_mismatch' }
end
if not held then
  return { 'not_allocated' }
end
if string.find(held, ':', 1, true) then
  return { 'already_redeemed' }
end
local now = now_ms()
if tonumber(expires) <= now then
  return { 'coupon_expired' }
end

redis.call('HSET', KEYS[1], 'u:' .. ARGV[1], held .. ':' .. now)
local used = redis.call('HINCRBY', KEYS[1], 'used', 1)
redis.call('HINCRBY', KEYS[2], ctype .. ':used', 1)
return { 'ok', ctype, used, max, now }
