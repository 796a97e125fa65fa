-- failed_lookup.lua: spend one token of a caller's budget of failed coupon lookups (a token
-- bucket), or say how long until one is there. A lookup that failed (no such coupon, or
-- not this user's) costs a token; with none left, the service answers 429 instead of the
-- failure, so a caller cannot enumerate codes faster than the budget allows.
--
-- KEYS: bucket        the caller's bucket (hash: tokens, at ms)
-- ARGV: rate          tokens added per second
--       burst         the most tokens the bucket holds (a new bucket starts full)
--       spend         1: take a token if there is one; 0: only look
--
-- Returns {"ok"} (a token was there, and was taken when spend is 1)
--      or {"too_many_failed_lookups", ms until a token is there}.

local now = now_ms()
local b = redis.call('HMGET', bucket, B_TOKENS, B_AT)
local tokens = tonumber(b[1]) or burst
if b[2] then
  tokens = math.min(burst, tokens + (now - tonumber(b[2])) * rate / 1000)
end
if tokens < 1 then
  return { 'too_many_failed_lookups', math.ceil((1 - tokens) * 1000 / rate) }
end
if spend == 1 then
  redis.call('HSET', bucket, B_TOKENS, string.format('%.3f', tokens - 1), B_AT, now)
  redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 1000)  -- full again by then
end
return { 'ok' }
