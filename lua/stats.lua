-- stats.lua: a consistent snapshot of the counters and of what is available now.
--
-- KEYS: stats         the stats hash
-- ARGV: available_prefix  key prefix of the available sets ({ns}:avail:, then the type)
--       draining_prefix   key prefix of the draining sets (coupons in the available set with
--                     no free usage)
--       slot          the prefix of the slot's keys ({ns}:), for settle()
--       audit_cap     audit stream length cap (approximate)
--       types         the coupon types, one each
--
-- First, up to SETTLE_IN_STATS of each type's due timers are carried out (settle() in
-- lib.lua), so holds past their deadline and starts that came count as they should now,
-- not when a sweep gets to them (the sweep, SETTLE_INTERVAL_S, does any beyond).
-- Returns {name, value, name, value, ...}: "<TYPE>:available" (the number of unexpired
-- coupons with a free usage) for each type, then every field of the stats hash
-- ("<TYPE>:created", "<TYPE>:allocated", "<TYPE>:held", ...).
-- Uses now_ms() and settle() from lib.lua.

local SETTLE_IN_STATS = 1000

local now = now_ms()
local result = {}
for _, ctype in ipairs(types) do
  settle(slot, ctype, slot .. K_DUE .. ctype, now, SETTLE_IN_STATS, audit_cap)
  result[#result + 1] = ctype .. ':available'
  result[#result + 1] = redis.call('ZCOUNT', available_prefix .. ctype, '(' .. now, '+inf')
      - redis.call('ZCOUNT', draining_prefix .. ctype, '(' .. now, '+inf')
end
for _, v in ipairs(redis.call('HGETALL', stats)) do
  result[#result + 1] = v
end
return result
