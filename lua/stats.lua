-- stats.lua: a consistent snapshot of the counters and of what is available now.
--
-- KEYS: stats        the stats hash
--       KEYS[2..]    for each type named in ARGV, in that order: its available set, then its
--                    draining set (coupons in the available set with no free usage)
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
  local available, draining = KEYS[2 * i], KEYS[2 * i + 1]
  result[#result + 1] = redis.call('ZCOUNT', available, '(' .. now, '+inf')
      - redis.call('ZCOUNT', draining, '(' .. now, '+inf')
end
for _, v in ipairs(redis.call('HGETALL', stats)) do
  result[#result + 1] = v
end
return result
