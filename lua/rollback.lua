-- rollback.lua: undo a redemption (the order behind it failed): the allocation becomes
-- unredeemed again, and may be redeemed again.
--
-- KEYS: coupon        the coupon hash
--       stats         the stats hash
--       audit_stream  the audit stream
--       record        (optional) the Idempotency-Key's record
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       code          the coupon's code
--       audit_cap     audit stream length cap (approximate)
--       slot          the prefix of the slot's keys ({ns}:): a hold's keys are built from it
--       capping       "=" in the main slot: a capped batch's count is given back here; else
--                     "" (the reply names the batch whose count the caller gives back)
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- Refused once the coupon has expired: by then the purge may have retired it on the
-- strength of that redemption, and a rolled-back usage could never be used again anyway.
-- "<TYPE>:used" counts redemptions net of rollbacks; "<TYPE>:rolled_back" counts these.
-- Returns {'ok', type, used, max_usages, rolled_back_at ms}, then in a shard the batch when
--         it is capped (the caller gives its count back in the main slot: batch_reserve.lua)
--      or {error code}: "coupon_not_found", "type_mismatch", "not_allocated",
--         "not_redeemed" (a hold within its deadline too), "hold_expired" (a hold past it,
--         which is then given back as settle() would), "coupon_expired";
--      with a record: {"replay", stored reply as JSON}, {"idempotency_key_reused"}.
-- Writes one audit entry: op=rollback, code, user_id, type, and used or error.
-- Uses now_ms(), holding(), type_keys(), lapse(), batch_rules(), batch_count(), idem_lookup()
-- and conclude() from lib.lua.

local now = now_ms()

local found = idem_lookup(record, fp, '', now)
if found then return found end

local a = { op = 'rollback', stream = audit_stream, cap = audit_cap, code = code, user = user, record = record,
  fp = fp, ttl_ms = ttl_ms }

local c, failure = holding(coupon, user, expected, now)
if failure then
  if failure == 'hold_expired' and c.hold then lapse(type_keys(slot, c.type), code, user, now, audit_cap) end
  return conclude(a, { failure }, c.type or expected, 'error', failure)
end
if not c.redeemed_at then
  return conclude(a, { 'not_redeemed' }, c.type, 'error', 'not_redeemed')
end
if c.expires <= now then
  return conclude(a, { 'coupon_expired' }, c.type, 'error', 'coupon_expired')
end

redis.call('HSET', coupon, c.holder, c.allocated_at)
local used = redis.call('HINCRBY', coupon, F_USED, -1)
redis.call('HINCRBY', stats, c.type .. ':used', -1)
redis.call('HINCRBY', stats, c.type .. ':rolled_back', 1)
local reply = { 'ok', c.type, used, c.max, now }
if c.batch then
  batch_count(slot, c.batch, N_USED, -1)
  local _, cap = batch_rules(slot, c.batch)
  if cap and capping == '=' then
    redis.call('HINCRBY', slot .. K_BATCH .. c.batch, A_REDEEMED, -1)
  elseif cap then
    reply[6] = c.batch
  end
end
return conclude(a, reply, c.type, 'used', used)
