-- validate.lua: would the user's redemption of a coupon succeed now? Writes nothing.
--
-- KEYS: coupon        the coupon hash
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       slot          the prefix of the slot's keys ({ns}:): its batches' rules are there
--       capping       "=" in the main slot (a batch's cap is checked here), else ""
--
-- The rules are redeemable()'s in lib.lua, the same redeem.lua applies, so the two answer
-- alike: a hold past its deadline is hold_expired here too (redeem would give it back).
-- Returns {"ok" or the error code redeem would answer, type, discount kind, discount value,
--          expires_at ms, starts_at ms or "", metadata JSON or "", hold deadline ms or ""}
--      when the user holds (or held) an allocation of the coupon; else only {the error code}
--      (coupon_not_found, type_mismatch, coupon_disabled, coupon_not_yet_valid,
--      not_allocated): a coupon's discount and metadata are its holders' to see, not any
--      caller's who names its code. "batch_exhausted" when the batch's cap is reached (checked
--      here in the main slot); in a shard, an "ok" of a capped batch ends with the batch,
--      for the caller to check its count in the main slot.
-- Uses now_ms() and redeemable() from lib.lua.

local c, failure = redeemable(coupon, user, expected, now_ms(), slot)
if not c.mark then return { failure } end
local hold = ''
if c.mark == 'h' or c.mark == 'x' then hold = c.time end
local reply = { failure or 'ok', c.type, c.kind, c.value, c.expires, c.starts or '', c.metadata or '', hold }
if not failure and c.cap then
  if capping ~= '=' then
    reply[9] = c.batch
  elseif tonumber(redis.call('HGET', slot .. K_BATCH .. c.batch, A_REDEEMED) or '0') >= c.cap then
    reply[1] = 'batch_exhausted'
  end
end
return reply
