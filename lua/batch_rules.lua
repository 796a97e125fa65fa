-- batch_rules.lua: set a batch's rules in one slot; in the main slot, its record too.
--
-- KEYS: rules         the slot's rules ({ns}:rules: batch -> rules)
--       stats         the slot's stats hash
--       counts        the batch's counters in the slot ({ns}:bstat:<batch>)
-- ARGV: batch         the batch id
--       new_rules     "" (none), "d" (disabled), "c<n>" (at most n redemptions), or "dc<n>"
--       slot          the prefix of the slot's keys ({ns}:)
--       main          "1" in the main slot: the batch's record ({ns}:batch:<id>) is here
--       audit_cap     audit stream length cap (approximate)
--       types         the coupon types, one each
--
-- The scripts of every slot read a batch's rules at each allocation, redemption and
-- validation (batch_rules() in lib.lua), so once every slot has them they hold everywhere.
-- Disabled or enabled, "<TYPE>:disabled" in the slot's stats moves by the batch's live
-- coupons of the type that are not disabled on their own.
-- A cap counts redemptions in the record's "redeemed". When a cap is first set, each slot
-- counts its redemptions of the batch so far in the same call that sets the rule: the main
-- slot adds its own to "redeemed" here; a shard returns its count for the caller to add
-- (later redemptions in a shard reserve their count in the main slot: batch_reserve.lua), so
-- the count is exact. A cap removed drops "redeemed".
-- In the main slot the record keeps "disabled" (0/1) and "max_redemptions" (absent without
-- a cap). Each slot's audit stream gets an entry (op=batch_rules, batch, rules): in a slot's
-- trail, an allocation before it knew the old rules, one after it the new.
-- Returns {redemptions counted here when a cap was first set, else 0}.
-- Uses audit() from lib.lua.

local old = redis.call('HGET', rules, batch) or ''
if new_rules == '' then
  redis.call('HDEL', rules, batch)
else
  redis.call('HSET', rules, batch, new_rules)
end
local was_off, is_off = string.sub(old, 1, 1) == 'd', string.sub(new_rules, 1, 1) == 'd'
if was_off ~= is_off then
  for _, ctype in ipairs(types) do
    local r = redis.call('HMGET', counts, N_LIVE .. ctype, N_OFF .. ctype)
    local n = tonumber(r[1] or '0') - tonumber(r[2] or '0')
    if n ~= 0 then redis.call('HINCRBY', stats, ctype .. ':disabled', is_off and n or -n) end
  end
end
local was_capped = string.find(old, 'c', 1, true) ~= nil
local cap = string.match(new_rules, 'c(%d+)')
local counted = 0
local record = slot .. K_BATCH .. batch
if cap and not was_capped then
  counted = tonumber(redis.call('HGET', counts, N_USED) or '0')
  if main == '1' then
    redis.call('HINCRBY', record, A_REDEEMED, counted)
    counted = 0
  end
end
if main == '1' then
  redis.call('HSET', record, A_DISABLED, is_off and 1 or 0)
  if cap then
    redis.call('HSET', record, A_MAX_REDEMPTIONS, cap)
  else
    redis.call('HDEL', record, A_MAX_REDEMPTIONS, A_REDEEMED)
  end
end
audit(slot .. K_AUDIT, audit_cap, 'op', 'batch_rules', 'batch', batch, 'rules', new_rules)
return { counted }
