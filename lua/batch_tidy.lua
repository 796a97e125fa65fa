-- batch_tidy.lua: after a batch is disabled or enabled, tidy the available sets for a
-- stretch of its codes in one slot, so allocations neither meet its disabled coupons nor
-- miss its enabled ones. Correctness never waits for it: every allocation, redemption and
-- validation reads the batch's rules itself.
--
-- KEYS: codes         the batch's codes in this slot ({ns}:bcodes:<batch>, a list)
-- ARGV: batch         the batch id
--       slot          the prefix of the slot's keys ({ns}:)
--       start         the index in `codes` to begin at
--       count         how many codes to look at (the call's bound)
--
-- Each code still of this batch (a code purged and uploaded again elsewhere is not): while
-- the batch or the coupon is disabled, out of its available set as an allocation would set
-- it aside (set_aside() in lib.lua); else back in it if it has a free usage (put_back()).
-- Returns {the index to go on from, or -1 when the list is done}.
-- Uses now_ms(), batch_rules(), type_keys(), set_aside() and put_back() from lib.lua.

local now = now_ms()
local batch_off = batch_rules(slot, batch)
local stretch = redis.call('LRANGE', codes, start, start + count - 1)
local prefix = slot .. K_COUPON
for j, code in ipairs(stretch) do
  local r = redis.call('HMGET', prefix .. code, F_BATCH, F_TYPE, F_EXPIRES, F_DISABLED, F_ALLOCATED, F_MAX_USAGES,
    F_LISTED)
  if r[1] == batch and tonumber(r[7]) == start + j - 1 then  -- its own entry, not a stale one
    local ctype, expires = r[2], tonumber(r[3])
    if batch_off or r[4] then
      local t = type_keys(slot, ctype)
      local score = redis.call('ZSCORE', t.available, code)
      if score and not redis.call('ZSCORE', t.draining, code) then
        set_aside({ available = t.available, exhausted = t.exhausted, draining = t.draining,
          tracked_prefix = t.tracked, held_prefix = t.held }, code, score)
      end
    else
      put_back(slot, code, ctype, r[5], r[6], expires, now)
    end
  end
end
if #stretch < count then return { -1 } end
return { start + count }
