-- validate.lua: would the user's redemption of a coupon succeed now? Writes nothing.
--
-- KEYS: coupon        the coupon hash
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--
-- The rules are redeemable()'s in lib.lua, the same redeem.lua applies, so the two answer
-- alike: a hold past its deadline is hold_expired here too (redeem would give it back).
-- Returns {"ok" or the error code redeem would answer, type, discount kind, discount value,
--          expires_at ms, starts_at ms or "", metadata JSON or "", hold deadline ms or ""}
--      when the user holds (or held) an allocation of the coupon; else only {the error code}
--      (coupon_not_found, type_mismatch, coupon_not_yet_valid, not_allocated): a coupon's
--      discount and metadata are its holders' to see, not any caller's who names its code.
-- Uses now_ms() and redeemable() from lib.lua.

local c, failure = redeemable(coupon, user, expected, now_ms())
if not c.mark then return { failure } end
local hold = ''
if c.mark == 'h' or c.mark == 'x' then hold = c.time end
return { failure or 'ok', c.type, c.kind, c.value, c.expires, c.starts or '', c.metadata or '', hold }
