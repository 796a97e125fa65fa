-- pool_level.lua: each checked type's level against its pool-low threshold, and one audit
-- entry when it crosses it (levels.py).
--
-- KEYS: levels        the pool-low states ({ns}:levels, main slot; fields keys.LevelField)
--       audit_stream  the main slot's audit stream
-- ARGV: audit_cap     audit stream length cap (approximate)
--       ticket        the check's ticket (HINCRBY of L_TICKET, taken before it read the counters)
--       checks        per type five values: the type, its available count, its threshold in
--                     coupons, and for a threshold in minutes the minutes and the allocation
--                     rate per minute it was computed from ("" and "" otherwise)
--
-- A type is low while available < threshold. A check older than the latest one applied to a
-- type (a smaller ticket: it read the counters earlier) changes nothing for it, so two
-- processes checking at once never record one crossing twice, nor undo each other's.
-- When the state changes, writes one audit entry: op=pool_low (or pool_recovered), type,
-- available, threshold, and minutes and rate_per_min for a threshold in minutes.
-- Returns {type, op, type, op, ...}: the crossings recorded.
-- Uses audit() from lib.lua.

local LOW, OK = 'low', 'ok' -- a type's state (L_STATE)

local crossed = {}
for i = 1, #checks, 5 do
  local ctype, available, threshold = checks[i], tonumber(checks[i + 1]), tonumber(checks[i + 2])
  local minutes, rate = checks[i + 3], checks[i + 4]
  if ticket > tonumber(redis.call('HGET', levels, L_SEEN .. ctype) or '0') then
    local was_low = redis.call('HGET', levels, L_STATE .. ctype) == LOW
    local low = available < threshold
    redis.call('HSET', levels, L_SEEN .. ctype, ticket, L_STATE .. ctype, low and LOW or OK,
      L_AVAILABLE .. ctype, available, L_THRESHOLD .. ctype, threshold)
    if low ~= was_low then
      local entry = low and { 'op', 'pool_low' } or { 'op', 'pool_recovered' }
      local more = { 'type', ctype, 'available', available, 'threshold', threshold }
      if minutes ~= '' then
        for _, v in ipairs({ 'minutes', minutes, 'rate_per_min', rate }) do more[#more + 1] = v end
      end
      for _, v in ipairs(more) do entry[#entry + 1] = v end
      audit(audit_stream, audit_cap, unpack(entry))
      crossed[#crossed + 1], crossed[#crossed + 2] = ctype, entry[2]
    end
  end
end
return crossed
