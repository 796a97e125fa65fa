-- upload.lua: store a chunk of new coupons; codes that already exist are skipped.
--
-- KEYS: stats         the stats hash (counters "<TYPE>:created", ...)
--       audit_stream  the audit stream
--       claims        this slot's MEGADEAL claims (code -> the coupon's line; see `claiming`)
--       record        (optional) the upload's Idempotency-Key record (upload_record.lua)
-- ARGV: prefix        key prefix of coupon hashes (a coupon's key is prefix .. code; it
--                     shares the hash tag of KEYS, so the script stays in one cluster slot)
--       audit_cap     audit stream length cap (approximate)
--       upload_id     the id of the whole upload, and part: this chunk as "i/n" (for the
--       part          audit entry)
--       available_prefix  key prefix of the available sets (sorted sets: code -> expires_at
--                     ms), {ns}:avail: then the type
--       due_prefix    key prefix of the types' timers ({ns}:due:, then the type)
--       owner         with `record`: the attempt that must own it
--       lease_ms      with `record`: how much longer the attempt owns it
--       claimed_type  in a shard of a sharded pool, "MEGADEAL": coupons of that type (stored
--                     in the main slot) are not stored here but claimed, so codes stay
--                     unique pool-wide; "" elsewhere
--       slot          the prefix of the slot's keys ({ns}:)
--       batch         the batch the coupons join (its record in the main slot exists already:
--                     batch_open.lua); counted in the slot's {ns}:bstat:<batch>, listed in
--                     its {ns}:bcodes:<batch> (the coupon keeps its index there, F_LISTED)
--       quota         "" for an upload; a generation's share of its batch in this slot
--                     (generation.py): the chunk stores coupons only while the batch's
--                     `created` here is below it, and stops there (the lines past it are
--                     neither stored nor listed in the reply), so however many runners send
--                     chunks, the slot never holds more than its share
--       fp, ttl_ms    with `record`: unused here (upload_record.lua keeps the record)
--       lines         one coupon each, as "code type kind value expires_at_ms max_usages
--                     starts_at_ms metadata": space-separated, starts_at_ms 0 without a start,
--                     metadata its JSON object or nothing (the rest of the line; no other
--                     field can hold a space)
--
-- A coupon whose start is ahead is scheduled: in no available set, but in its type's timers
-- (due), counted in "<TYPE>:scheduled", until settle() (lib.lua) puts it in the pool.
--
-- Returns {created, i, j, ...}: the number stored, then the 1-based positions in this
-- chunk of the coupons not stored because their code already existed (in Redis, or
-- earlier in the same chunk), and when claiming, -i for each MEGADEAL coupon claimed (new,
-- or claimed before with the same line: an upload sent again): the caller stores those in
-- the main slot, which finds the duplicates among them. A claim whose coupon has expired
-- no longer holds its code.
-- With a record, a chunk already recorded there is not stored again: its recorded reply
-- comes back; a chunk stored is recorded ("part:i") in the same call. Returns
-- {"idempotency_key_in_progress", lease_ms} if another attempt owns the record now.
-- Errors: none of its own; the caller validates every value beforehand.
-- Writes one audit entry: op=upload, upload, part, created, duplicates.
-- Uses now_ms(), batch_rules() and audit() from lib.lua.

local claiming = claimed_type ~= ''
local created_ms = now_ms()
local part_field = R_PART .. string.match(part, '^(%d+)/')
if record then
  local r = redis.call('HMGET', record, R_OWNER, part_field)
  if r[1] ~= owner then return { 'idempotency_key_in_progress', tonumber(lease_ms) } end
  if r[2] then return cjson.decode(r[2]) end
end
local created, usages = 0, 0
local created_by_type, scheduled_by_type = {}, {}
local codes = slot .. K_BATCH_CODES .. batch
local duplicates = {}
local claimed = {}
local batch_stats = slot .. K_BATCH_STATS .. batch
local room = quota ~= '' and tonumber(quota) - tonumber(redis.call('HGET', batch_stats, N_CREATED) or '0')

-- Whether `code` is claimed by a MEGADEAL coupon that has not expired; the line claiming it.
local function claim_of(code)
  local line = redis.call('HGET', claims, code)
  if not line then return nil end
  if tonumber(string.match(line, '^%S+ %S+ %S+ %S+ (%S+)')) > created_ms then return line end
  redis.call('HDEL', claims, code)  -- its coupon expired: the code is free again
  return nil
end

for i, line in ipairs(lines) do
  if room and created >= room then break end
  local code, ctype, kind, value, expires, max, starts, metadata =
      string.match(line, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (.*)$')
  local key = prefix .. code
  local claim = claiming and claim_of(code)
  if redis.call('EXISTS', key) == 1 or (claim and claim ~= line) or (claim and ctype ~= claimed_type) then
    duplicates[#duplicates + 1] = i
  elseif claiming and ctype == claimed_type then
    redis.call('HSET', claims, code, line)
    claimed[#claimed + 1] = -i
  else
    local listed = redis.call('RPUSH', codes, code) - 1  -- a code purged and stored again is listed again
    redis.call('HSET', key, F_TYPE, ctype, F_DISCOUNT_KIND, kind, F_DISCOUNT_VALUE, value,
      F_EXPIRES, expires, F_MAX_USAGES, max, F_ALLOCATED, 0, F_USED, 0, F_CREATED, created_ms, F_BATCH, batch,
      F_LISTED, listed)
    usages = usages + tonumber(max)
    if metadata ~= '' then redis.call('HSET', key, F_METADATA, metadata) end
    if starts ~= '0' then redis.call('HSET', key, F_STARTS, starts) end
    if tonumber(starts) > created_ms then
      redis.call('ZADD', due_prefix .. ctype, starts, code)
      scheduled_by_type[ctype] = (scheduled_by_type[ctype] or 0) + 1
    else
      redis.call('ZADD', available_prefix .. ctype, expires, code)
    end
    created = created + 1
    created_by_type[ctype] = (created_by_type[ctype] or 0) + 1
  end
end

local disabled = batch_rules(slot, batch)
for ctype, n in pairs(created_by_type) do
  redis.call('HINCRBY', stats, ctype .. ':created', n)
  redis.call('HINCRBY', batch_stats, N_LIVE .. ctype, n)
  if disabled then redis.call('HINCRBY', stats, ctype .. ':disabled', n) end
end
if created > 0 then
  redis.call('HINCRBY', batch_stats, N_CREATED, created)
  redis.call('HINCRBY', batch_stats, N_USAGES, usages)
end
for ctype, n in pairs(scheduled_by_type) do
  redis.call('HINCRBY', stats, ctype .. ':scheduled', n)
end

audit(audit_stream, audit_cap, 'op', 'upload', 'upload', upload_id, 'batch', batch, 'part', part,
  'created', created, 'duplicates', #duplicates)

local result = { created }
for _, i in ipairs(duplicates) do result[#result + 1] = i end
for _, i in ipairs(claimed) do result[#result + 1] = i end
if record then
  redis.call('HSET', record, part_field, cjson.encode(result), R_LEASE, created_ms + tonumber(lease_ms))
end
return result
