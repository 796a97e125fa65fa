-- validate.lua: would the user's redemption of a coupon succeed now? Writes nothing.
--
-- KEYS: coupon        the coupon hash
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--
-- The rules are redeemable()'s in lib.lua, the same redeem.lua applies, so the two answer
-- alike: a hold past its deadline is hold_expired here too (redeem would give it back).
-- Returns {"ok" or the error code redeem would answer, type, discount kind, discount value,
--          expires_at ms, starts_at ms or "", metadata JSON or "", hold deadline ms or ""};
--      only {"coupon_not_found"} when there is no such coupon.
-- Uses now_ms() and redeemable() from lib.lua.

local c, failure = redeemable(coupon, user, expected, now_ms())
if failure == 'coupon_not_found' then return { failure } end
local hold = ''
if c.mark == 'h' or c.mark == 'x' then hold = c.time end
return { failure or 'ok', c.type, c.kind, c.value, c.expires, c.starts or '', c.metadata or '', hold }
