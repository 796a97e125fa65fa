-- purge.lua: remove up to ARGV[2] expired coupons from the pool, oldest expiry first.
--
-- KEYS[1]      expiry index (sorted set: code -> expires_at ms)
-- KEYS[2]      stats hash (counters "<TYPE>:purged")
-- KEYS[3..5]   available sets for FREE, STANDARD, MEGADEAL
-- KEYS[6]      audit stream
-- ARGV[1]      key prefix of coupon hashes
-- ARGV[2]      most coupons to look at in this call
-- ARGV[3]      audit stream length cap (approximate)
--
-- A coupon never redeemed is deleted with its allocation records ("purged"). One redeemed
-- at least once leaves the pool and the expiry index but keeps its hash and history
-- ("retired"). No other counter changes.
-- Returns {examined, purged FREE, purged STANDARD, purged MEGADEAL, retired FREE,
--          retired STANDARD, retired MEGADEAL}; examined < ARGV[2] means nothing is left.
-- Writes one audit entry (op=purge, purged_<TYPE>, retired_<TYPE>) if it removed anything.
-- Uses now_ms() and audit() from lib.lua.

local available = { FREE = KEYS[3], STANDARD = KEYS[4], MEGADEAL = KEYS[5] }
local types = { 'FREE', 'STANDARD', 'MEGADEAL' }
local purged = { FREE = 0, STANDARD = 0, MEGADEAL = 0 }
local retired = { FREE = 0, STANDARD = 0, MEGADEAL = 0 }
local now = now_ms()

local codes = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, code in ipairs(codes) do
  local key = ARGV[1] .. code
  local c = redis.call('HMGET', key, 'type', 'used')
  local ctype, used = c[1], c[2]
  redis.call('ZREM', KEYS[1], code)
  if ctype then
    redis.call('ZREM', available[ctype], code)
    if tonumber(used) == 0 then
      redis.call('DEL', key)
      purged[ctype] = purged[ctype] + 1
    else
      retired[ctype] = retired[ctype] + 1
    end
  end
end

local result = { #codes }
local entry = { 'op', 'purge' }
for _, t in ipairs(types) do
  if purged[t] > 0 then
    redis.call('HINCRBY', KEYS[2], t .. ':purged', purged[t])
    entry[#entry + 1] = 'purged_' .. t
    entry[#entry + 1] = purged[t]
  end
  result[#result + 1] = purged[t]
end
for _, t in ipairs(types) do
  if retired[t] > 0 then
    entry[#entry + 1] = 'retired_' .. t
    entry[#entry + 1] = retired[t]
  end
  result[#result + 1] = retired[t]
end
if #entry > 2 then
  audit(KEYS[6], ARGV[3], unpack(entry))
end
return result
