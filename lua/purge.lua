-- purge.lua: remove up to ARGV[2] expired coupons from the pool, oldest expiry first
-- within each sorted set.
--
-- KEYS[1..3]   available sets for FREE, STANDARD, MEGADEAL (code -> expires_at ms)
-- KEYS[4]      exhausted set (code -> expires_at ms of coupons with no free usage)
-- KEYS[5]      stats hash (counters "<TYPE>:purged")
-- KEYS[6]      audit stream
-- ARGV[1]      key prefix of coupon hashes
-- ARGV[2]      most coupons to look at in this call
-- ARGV[3]      audit stream length cap (approximate)
--
-- Every stored coupon is in exactly one of KEYS[1..4] until it expires and is purged, so
-- walking those four sets up to now finds each expired coupon once.
-- A coupon never redeemed is deleted with its allocation records ("purged"). One redeemed
-- at least once leaves its sorted set but keeps its hash and history ("retired"). No other
-- counter changes.
-- Returns {examined, purged FREE, purged STANDARD, purged MEGADEAL, retired FREE,
--          retired STANDARD, retired MEGADEAL}; examined < ARGV[2] means nothing is left.
-- Writes one audit entry (op=purge, purged_<TYPE>, retired_<TYPE>) if it removed anything.
-- Uses now_ms() and audit() from lib.lua.

local types = { 'FREE', 'STANDARD', 'MEGADEAL' }
local purged = { FREE = 0, STANDARD = 0, MEGADEAL = 0 }
local retired = { FREE = 0, STANDARD = 0, MEGADEAL = 0 }
local limit = tonumber(ARGV[2])
local now = now_ms()

local examined = 0
for i = 1, 4 do
  if examined == limit then break end
  local codes = redis.call('ZRANGE', KEYS[i], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit - examined)
  examined = examined + #codes
  for _, code in ipairs(codes) do
    local key = ARGV[1] .. code
    local c = redis.call('HMGET', key, 'type', 'used')
    local ctype, used = c[1], c[2]
    redis.call('ZREM', KEYS[i], code)
    if ctype then
      if tonumber(used) == 0 then
        redis.call('DEL', key)
        purged[ctype] = purged[ctype] + 1
      else
        retired[ctype] = retired[ctype] + 1
      end
    end
  end
end

local result = { examined }
local entry = { 'op', 'purge' }
for _, t in ipairs(types) do
  if purged[t] > 0 then
    redis.call('HINCRBY', KEYS[5], t .. ':purged', purged[t])
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
