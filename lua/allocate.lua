-- allocate.lua: reserve one usage of an available, unexpired coupon for a user.
--
-- KEYS[1]  available set of the requested type (sorted set: code -> expires_at ms)
-- KEYS[2]  stats hash
-- ARGV[1]  key prefix of coupon hashes (the coupon's key is ARGV[1] .. code; it shares
--          the hash tag of KEYS, so the script stays within one cluster slot)
-- ARGV[2]  user id
-- ARGV[3]  coupon type (for the "<TYPE>:allocated" counter)
--
-- The coupon that expires first is handed out first, skipping coupons this user already
-- holds. A coupon leaves the available set when its last usage is reserved.
--
-- Returns {"ok", code, discount kind, discount value, expires_at ms, allocated_at ms}
--      or {"pool_empty"} when no unexpired coupon with a free usage is left for this user.

local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local holder = 'u:' .. ARGV[2]
local batch_size = 16
local offset = 0

while true do
  -- "(" excludes now_ms: a coupon whose expiry is now is already expired.
  local codes = redis.call('ZRANGE', KEYS[1], '(' .. now_ms, '+inf', 'BYSCORE',
    'LIMIT', offset, batch_size)
  if #codes == 0 then
    return { 'pool_empty' }
  end
  for _, code in ipairs(codes) do
    local key = ARGV[1] .. code
    if redis.call('HSETNX', key, holder, now_ms) == 1 then
      local allocated = redis.call('HINCRBY', key, 'alloc', 1)
      local c = redis.call('HMGET', key, 'dk', 'dv', 'exp', 'max')
      if allocated >= tonumber(c[4]) then
        redis.call('ZREM', KEYS[1], code)
      end
      redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':allocated', 1)
      return { 'ok', code, c[1], c[2], c[3], now_ms }
    end
  end
  offset = offset + batch_size
end
