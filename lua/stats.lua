-- stats.lua: a consistent snapshot of the counters and of what is available now.
--
-- KEYS[1]      stats hash
-- KEYS[2..4]   available sets for FREE, STANDARD, MEGADEAL
--
-- Returns {available FREE, available STANDARD, available MEGADEAL, field, value, ...}:
-- the number of unexpired coupons with a free usage per type, then the stats hash.

local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local result = {}
for i = 2, 4 do
  result[#result + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. now_ms, '+inf')
end
local counters = redis.call('HGETALL', KEYS[1])
for _, v in ipairs(counters) do result[#result + 1] = v end
return result
