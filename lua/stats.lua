-- stats.lua: a consistent snapshot of the counters and of what is available now.
--
-- KEYS: stats         the stats hash
-- ARGV: available_prefix  key prefix of the available sets ({ns}:avail:, then the type)
--       draining_prefix   key prefix of the draining sets (coupons in the available set with
--                     no free usage)
--       types         the coupon types, one each
--
-- Returns {name, value, name, value, ...}: "<TYPE>:available" (the number of unexpired
-- coupons with a free usage) for each type, then every field of the stats hash
-- ("<TYPE>:created", "<TYPE>:allocated", ...).
-- Uses now_ms() from lib.lua.

local now = now_ms()
local result = {}
for _, ctype in ipairs(types) do
  result[#result + 1] = ctype .. ':available'
  result[#result + 1] = redis.call('ZCOUNT', available_prefix .. ctype, '(' .. now, '+inf')
      - redis.call('ZCOUNT', draining_prefix .. ctype, '(' .. now, '+inf')
end
for _, v in ipairs(redis.call('HGETALL', stats)) do
  result[#result + 1] = v
end
return result
