-- settle.lua: carry out a type's due holds and starts, a batch (the app's sweep, stats and
-- the purge call it; allocations do a few of their own).
--
-- KEYS: due           the type's timers (see settle in lib.lua)
-- ARGV: slot          the prefix of the slot's keys ({ns}:)
--       ctype         the type
--       budget        most timers to carry out
--       audit_cap     audit stream length cap (approximate)
--
-- Returns {carried out, 1 if more are due now else 0}.
-- Writes an audit entry per hold that lapses (op=hold_expired).
-- Uses now_ms() and settle() from lib.lua.

local now = now_ms()
local done = settle(slot, ctype, due, now, budget, audit_cap)
local more = done == budget and #redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, 1) or 0
return { done, more }
