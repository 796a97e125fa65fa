-- redeem.lua: record the use of a coupon the user holds.
--
-- KEYS: coupon        the coupon hash
--       stats         the stats hash
--       audit_stream  the audit stream
--       record        (optional) the Idempotency-Key's record
-- ARGV: user          the user id
--       expected      the expected coupon type, or "" to accept any type
--       code          the coupon's code (for the audit entry)
--       audit_cap     audit stream length cap (approximate)
--       slot          the prefix of the slot's keys ({ns}:): a hold's keys are built from it
--       capping       how a batch's cap of redemptions applies here: "=" in the main slot
--                     (which keeps the batch records: the count is checked and taken here),
--                     or in a shard the batch whose count the caller has reserved in the main
--                     slot (batch_reserve.lua), or "" (none reserved)
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- The rules are redeemable()'s in lib.lua, which validate.lua applies too: the coupon
-- exists, its type matches, it has started, the user holds an allocation of it, that
-- allocation is not redeemed yet, it is not a hold past its deadline, the coupon has not
-- expired. A hold within its deadline is confirmed: it is then a redeemed allocation like
-- any other. A hold found past its deadline is given back to the pool now (as settle()
-- would), and the answer is hold_expired.
--
-- Returns {'ok', type, used, max_usages, redeemed_at ms}
--      or {error code}: "coupon_not_found", "type_mismatch", "coupon_disabled",
--         "coupon_not_yet_valid", "not_allocated", "already_redeemed", "hold_expired",
--         "coupon_expired", "batch_exhausted" (its batch's cap is reached);
--      or {"batch_capped", batch}: in a shard, the coupon's batch is capped and its count was
--         not reserved: nothing written (no audit entry, no record); reserve, then call again.
--      with a record: {"replay", stored reply as JSON}, {"idempotency_key_reused"}.
-- The holder field F_HOLDER .. user holds "<allocated_at ms>" (or, held, "<allocated_at
-- ms>h<deadline ms>") and becomes "<allocated_at ms>:<redeemed_at ms>" once redeemed.
-- Writes one audit entry: op=redeem, code, user_id, type, and used or error.
-- Uses now_ms(), redeemable(), batch_count(), type_keys(), lapse(), unhold(), audit(),
-- idem_lookup() and
-- idem_store() from lib.lua.

local now = now_ms()
if record then
  local found = idem_lookup(record, fp, '', now)
  if found then return found end
end

local c, failure = redeemable(coupon, user, expected, now, slot)
if not failure and c.cap then
  if capping == '=' then  -- the main slot: the batch's record is here
    local batch_record = slot .. K_BATCH .. c.batch
    if tonumber(redis.call('HGET', batch_record, A_REDEEMED) or '0') >= c.cap then
      failure = 'batch_exhausted'
    else
      redis.call('HINCRBY', batch_record, A_REDEEMED, 1)
    end
  elseif capping ~= c.batch then
    return { 'batch_capped', c.batch }
  end
end
if failure then
  if failure == 'hold_expired' and c.mark == 'h' then
    lapse(type_keys(slot, c.type), code, user, now, audit_cap)
  end
  audit(audit_stream, audit_cap, 'op', 'redeem', 'code', code, 'user_id', user, 'type', c.type or expected,
    'error', failure)
  if record then idem_store(record, fp, ttl_ms, { failure }) end
  return { failure }
end

redis.call('HSET', coupon, c.holder, c.allocated_at .. ':' .. now)
if c.mark == 'h' then unhold(type_keys(slot, c.type), code, user) end
local used = redis.call('HINCRBY', coupon, F_USED, 1)
redis.call('HINCRBY', stats, c.type .. ':used', 1)
batch_count(slot, c.batch, N_USED, 1)
audit(audit_stream, audit_cap, 'op', 'redeem', 'code', code, 'user_id', user, 'type', c.type, 'used', used)
local reply = { 'ok', c.type, used, c.max, now }
if record then idem_store(record, fp, ttl_ms, reply) end
return reply
