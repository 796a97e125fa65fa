-- purge.lua: remove up to `limit` expired coupons from the pool, oldest expiry first
-- within each sorted set, stopping sooner once they had HOLDERS_PER_CALL holders.
--
-- KEYS: stats         the stats hash (counters "<TYPE>:purged")
--       audit_stream  the audit stream
--       exhausted     coupons with no free usage (code -> expires_at ms)
-- ARGV: prefix        key prefix of coupon hashes
--       limit         most coupons to look at in this call
--       audit_cap     audit stream length cap (approximate)
--       tracked_prefix  key prefix of the coupons' tracked sets (dropped with the coupon)
--       available_prefix  key prefix of the available sets ({ns}:avail:, then the type)
--       draining_prefix   key prefix of the draining sets (a coupon purged leaves it too)
--       due_prefix    key prefix of the types' timers ({ns}:due:, then the type)
--       types         the coupon types, one each
--
-- Every stored coupon is in exactly one of the available sets and `exhausted` until it
-- expires and is purged, so walking those sets up to now finds each expired coupon once.
-- A coupon never redeemed is deleted with its allocation records ("purged"). One redeemed
-- at least once leaves its sorted set but keeps its hash and history ("retired"). No other
-- counter changes but its batch's (K_BATCH_STATS: it leaves the batch's live coupons, usages
-- and allocations, and counts as purged) and, if it was disabled, "<TYPE>:disabled". A
-- coupon's hash (a field per holder) and tracked set (at most a user per holder) are
-- UNLINKed, not DELeted: Redis frees a value of more than 64 elements in its background
-- thread, and this call frees the smaller ones. So a call stops after the coupon
-- that brings the fields of the coupons it took (HLEN: holders, and holds that lapsed) to
-- HOLDERS_PER_CALL: its work is bounded by `limit` and HOLDERS_PER_CALL together, whatever
-- one coupon holds.
-- A hold ends at its coupon's expiry at the latest, so only a coupon that expired before
-- the first due timer (settle.lua carries those out; the store calls it first) can have no
-- hold left to settle: the purge takes only those ("horizon"), and a coupon's holds are
-- always settled before the coupon goes.
-- Returns {"more", 0 or 1, "purged:<TYPE>", n, "retired:<TYPE>", n, ...} for every type;
-- more is 0 when nothing expired is left.
-- Writes one audit entry (op=purge, purged_<TYPE>, retired_<TYPE>) if it removed anything.
-- Uses now_ms(), batch_rules() and audit() from lib.lua.

local HOLDERS_PER_CALL = 5000  -- holders of the coupons one call takes, about

local sets, draining = {}, {}
local purged, retired = {}, {}
for _, ctype in ipairs(types) do
  local available = available_prefix .. ctype
  sets[#sets + 1] = available
  draining[available] = draining_prefix .. ctype
  purged[ctype], retired[ctype] = 0, 0
end
sets[#sets + 1] = exhausted
local now = now_ms()
local horizon = now
for _, ctype in ipairs(types) do
  local first = redis.call('ZRANGE', due_prefix .. ctype, 0, 0, 'WITHSCORES')
  if first[2] and tonumber(first[2]) <= horizon then horizon = tonumber(first[2]) - 1 end
end

local slot = string.sub(prefix, 1, #prefix - #K_COUPON)
local examined, holders = 0, 0
for _, set in ipairs(sets) do
  if examined == limit or holders >= HOLDERS_PER_CALL then break end
  local codes = redis.call('ZRANGE', set, '-inf', horizon, 'BYSCORE', 'LIMIT', 0, limit - examined)
  for _, code in ipairs(codes) do
    if holders >= HOLDERS_PER_CALL then break end
    examined = examined + 1
    local key = prefix .. code
    local c = redis.call('HMGET', key, F_TYPE, F_USED, F_BATCH, F_DISABLED, F_MAX_USAGES, F_ALLOCATED)
    local ctype, used, batch = c[1], c[2], c[3] or nil
    if batch and ctype then  -- it leaves its batch's live coupons, usages and allocations
      local counts = slot .. K_BATCH_STATS .. batch
      redis.call('HINCRBY', counts, N_LIVE .. ctype, -1)
      redis.call('HINCRBY', counts, N_PURGED, 1)
      redis.call('HINCRBY', counts, N_USAGES, 0 - tonumber(c[5]))
      redis.call('HINCRBY', counts, N_ALLOCATED, 0 - tonumber(c[6]))
      if c[4] then
        redis.call('HINCRBY', counts, N_OFF .. ctype, -1)
        redis.call('HDEL', key, F_DISABLED)
      end
      if c[4] or batch_rules(slot, batch) then redis.call('HINCRBY', stats, ctype .. ':disabled', -1) end
    end
    holders = holders + redis.call('HLEN', key)  -- its holder fields, lapsed holds' too
    redis.call('ZREM', set, code)
    if draining[set] then redis.call('ZREM', draining[set], code) end
    redis.call('UNLINK', tracked_prefix .. code)
    if ctype and purged[ctype] then
      if tonumber(used) == 0 then
        redis.call('UNLINK', key)
        purged[ctype] = purged[ctype] + 1
      else
        redis.call('HSET', key, F_RETIRED, '1')  -- its batch counted it out: a release later counts nothing
        retired[ctype] = retired[ctype] + 1
      end
    end
  end
end

local result = { 'more', (examined == limit or holders >= HOLDERS_PER_CALL) and 1 or 0 }
local entry = { 'op', 'purge' }
for _, kind in ipairs({ 'purged', 'retired' }) do
  local counts = kind == 'purged' and purged or retired
  for _, t in ipairs(types) do
    if counts[t] > 0 then
      if kind == 'purged' then
        redis.call('HINCRBY', stats, t .. ':purged', counts[t])
      end
      entry[#entry + 1] = kind .. '_' .. t
      entry[#entry + 1] = counts[t]
    end
    result[#result + 1] = kind .. ':' .. t
    result[#result + 1] = counts[t]
  end
end
if #entry > 2 then
  audit(audit_stream, audit_cap, unpack(entry))
end
return result
