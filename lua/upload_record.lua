-- upload_record.lua: the Idempotency-Key record of an upload, which takes many calls
-- (upload.lua records each chunk's outcome in it as it stores the chunk).
--
-- KEYS: record        the record (see idem_lookup in lib.lua)
-- ARGV: action        "claim", "finish" or "abandon"
--       fp            the request's fingerprint
--       owner         this attempt's id
--       ttl_ms        how long the record is kept
--       lease_ms      (claim) how long the attempt owns the record without a word from it
--       chunk_size    (claim) coupons per chunk: a resumed upload chunks as the first did
--       reply         (finish) the answer, as JSON
--
-- claim: {"run", chunk size} (new, or resumed: chunks recorded are not stored again),
--        or {"replay", reply}, {"idempotency_key_reused"}, {"idempotency_key_in_progress", ms};
-- finish: keeps `reply` as the answer; abandon: gives up the lease at once (a 5xx: the
-- chunks recorded stay, for a retry to resume). Both return {"ok"} if `owner` still owns
-- the record, else {"idempotency_key_in_progress", 0}.
-- Uses now_ms(), idem_lookup() and idem_store() from lib.lua.

local now = now_ms()

if action == 'claim' then
  local found = idem_lookup(record, fp, owner, now)
  if found then return found end
  local chunk = redis.call('HGET', record, R_CHUNK) or chunk_size
  redis.call('HSET', record, R_FINGERPRINT, fp, R_OWNER, owner, R_LEASE, now + tonumber(lease_ms), R_CHUNK, chunk)
  redis.call('PEXPIRE', record, ttl_ms)
  return { 'run', tonumber(chunk) }
end

if redis.call('HGET', record, R_OWNER) ~= owner then
  return { 'idempotency_key_in_progress', 0 }
end
if action == 'finish' then
  redis.call('HSET', record, R_FINGERPRINT, fp, R_REPLY, reply)
  local done = { R_OWNER, R_LEASE, R_CHUNK }
  for _, field in ipairs(redis.call('HKEYS', record)) do  -- a field per chunk: 500 at most
    if string.sub(field, 1, #R_PART) == R_PART then done[#done + 1] = field end
  end
  redis.call('HDEL', record, unpack(done))
  redis.call('PEXPIRE', record, ttl_ms)
else
  redis.call('HSET', record, R_LEASE, 0)
end
return { 'ok' }
