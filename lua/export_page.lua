-- export_page.lua: a stretch of a batch's coupons in one slot, for an export. Writes nothing.
--
-- KEYS: codes         the batch's codes in this slot ({ns}:bcodes:<batch>, a list)
-- ARGV: batch         the batch id
--       slot          the prefix of the slot's keys ({ns}:)
--       start         the index in `codes` to begin at
--       count         how many codes to look at (the call's bound)
--
-- Returns {next index or -1 when the list is done, then per coupon still of this batch at
-- this place in its list (a code purged, or purged and uploaded again elsewhere, is left
-- out, and one stored again in this batch is there once: at the index its hash keeps,
-- F_LISTED) 12 values: code, type,
-- discount kind, discount value, expires_at ms, max usages, allocated, used, starts_at ms
-- or "", metadata JSON or "", disabled on its own ("1" or ""), created_at ms}.
-- Uses nothing from lib.lua.

local stretch = redis.call('LRANGE', codes, start, start + count - 1)
local reply = { #stretch < count and -1 or start + count }
local prefix = slot .. K_COUPON
for j, code in ipairs(stretch) do
  local r = redis.call('HMGET', prefix .. code, F_BATCH, F_TYPE, F_DISCOUNT_KIND, F_DISCOUNT_VALUE, F_EXPIRES,
    F_MAX_USAGES, F_ALLOCATED, F_USED, F_STARTS, F_METADATA, F_DISABLED, F_CREATED, F_LISTED)
  if r[1] == batch and tonumber(r[13]) == start + j - 1 then
    local n = #reply
    reply[n + 1] = code
    for i = 2, 12 do reply[n + i] = r[i] or '' end
  end
end
return reply
