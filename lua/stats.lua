-- stats.lua: a consistent snapshot of the counters and of what is available now.
--
-- KEYS[1]      stats hash
-- KEYS[2..4]   available sets for FREE, STANDARD, MEGADEAL
--
-- Returns {available FREE, available STANDARD, available MEGADEAL, field, value, ...}:
-- the number of unexpired coupons with a free usage per type, then the stats hash.
-- Uses now_ms() from lib.lua.

local now = now_ms()
local result = {}
for i = 2, 4 do
  result[#result + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
local counters = redis.call('HGETALL', KEYS[1])
for _, v in ipairs(counters) do result[#result + 1] = v end
return result
