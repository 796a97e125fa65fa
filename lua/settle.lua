-- settle.lua: carry out the due holds and starts of a slot's types, a batch of each (the
-- app's sweep and the purge call it; allocations and stats do some of their own).
--
-- KEYS: dues          each type's timers (see settle in lib.lua), in the order of `types`
-- ARGV: slot          the prefix of the slot's keys ({ns}:)
--       budget        most timers of each type to carry out
--       audit_cap     audit stream length cap (approximate)
--       types         the coupon types, one each
--
-- Returns {carried out, 1 if more are due now else 0}.
-- Writes an audit entry per hold that lapses (op=hold_expired).
-- Uses now_ms() and settle() from lib.lua.

local now = now_ms()
local done, more = 0, 0
for i, ctype in ipairs(types) do
  local n = settle(slot, ctype, dues[i], now, budget, audit_cap)
  done = done + n
  if n == budget and #redis.call('ZRANGE', dues[i], '-inf', now, 'BYSCORE', 'LIMIT', 0, 1) > 0 then more = 1 end
end
return { done, more }
