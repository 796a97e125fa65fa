-- coupon_switch.lua: disable or enable one coupon.
--
-- KEYS: coupon        the coupon hash
--       stats         the stats hash
--       audit_stream  the audit stream
-- ARGV: code          the coupon's code
--       disable       "1" to disable it, "" to enable it
--       slot          the prefix of the slot's keys ({ns}:)
--       audit_cap     audit stream length cap (approximate)
--
-- A disabled coupon is never allocated (an allocation that meets it in its available set
-- sets it aside: set_aside() in lib.lua), and its redemption and validation answer
-- coupon_disabled. Enabled again (and its batch not disabled), it goes back to its available
-- set at once if it has a free usage. A coupon of a disabled batch stays disabled while the
-- batch is, whatever its own flag.
-- Counted in "<TYPE>:disabled" (unless its batch is disabled: then it was already) and in
-- its batch's "off:<TYPE>"; one audit entry: op=disable or enable, code, type.
-- Returns {"ok", type, disabled on its own (0/1), its batch disabled (0/1), batch or ""}
--      or {"coupon_not_found"}, or {"coupon_expired"} (disabling a coupon past its expiry).
-- Uses now_ms(), batch_rules(), batch_count(), put_back() and audit() from lib.lua.

local r = redis.call('HMGET', coupon, F_TYPE, F_EXPIRES, F_BATCH, F_DISABLED, F_ALLOCATED, F_MAX_USAGES, F_STARTS)
local ctype, batch = r[1], r[3] or nil
if not ctype then return { 'coupon_not_found' } end
local now = now_ms()
local expires = tonumber(r[2])
if disable == '1' and expires <= now then return { 'coupon_expired' } end
local batch_off = batch_rules(slot, batch)
local was_off = r[4] ~= false
local is_off = disable == '1'
if was_off ~= is_off then
  local delta = is_off and 1 or -1
  if is_off then
    redis.call('HSET', coupon, F_DISABLED, '1')
  else
    redis.call('HDEL', coupon, F_DISABLED)
  end
  batch_count(slot, batch, N_OFF .. ctype, delta)
  if not batch_off then redis.call('HINCRBY', stats, ctype .. ':disabled', delta) end
  if not is_off and not batch_off then put_back(slot, code, ctype, r[5], r[6], expires, now) end
  local op = 'enable'
  if is_off then op = 'disable' end
  audit(audit_stream, audit_cap, 'op', op, 'code', code, 'type', ctype)
end
return { 'ok', ctype, is_off and 1 or 0, batch_off and 1 or 0, batch or '' }
