-- stats.lua: a consistent snapshot of the counters and of what is available now.
--
-- KEYS: stats        the stats hash
--       KEYS[2..]    the available set of each type named in ARGV, in that order
-- ARGV: the coupon types, one each
--
-- Returns {name, value, name, value, ...}: "<TYPE>:available" (the number of unexpired
-- coupons with a free usage) for each type, then every field of the stats hash
-- ("<TYPE>:created", "<TYPE>:allocated", ...).
-- Uses now_ms() from lib.lua.

local stats = KEYS[1]
local types = ARGV

local now = now_ms()
local result = {}
for i, ctype in ipairs(types) do
  result[#result + 1] = ctype .. ':available'
  result[#result + 1] = redis.call('ZCOUNT', KEYS[1 + i], '(' .. now, '+inf')
end
for _, v in ipairs(redis.call('HGETALL', stats)) do
  result[#result + 1] = v
end
return result
