-- batch_open.lua: make sure a batch has its record (in the main slot) before coupons join it.
--
-- KEYS: batches       every batch id (a sorted set, score 0: paged by id)
--       record        the batch's record ({ns}:batch:<id>, a hash)
-- ARGV: batch         the batch id (validated: 1-64 of [A-Za-z0-9_.-])
--       ctype         the type of the coupons joining, or "MIXED" for several
--       source        "upload" or "generation": what made the batch
--
-- A new batch gets created_at (Redis's time, ms), its type and source; a batch that exists
-- keeps them, but its type becomes "MIXED" once coupons of another type join it.
-- Returns {"created" or "exists", its type}.
-- Uses now_ms() from lib.lua.

if redis.call('ZADD', batches, 'NX', 0, batch) == 1 or redis.call('EXISTS', record) == 0 then
  redis.call('HSET', record, A_TYPE, ctype, A_CREATED_AT, now_ms(), A_SOURCE, source)
  return { 'created', ctype }
end
local MIXED = 'MIXED'
local known = redis.call('HGET', record, A_TYPE)
if known ~= ctype and known ~= MIXED then
  redis.call('HSET', record, A_TYPE, MIXED)
  known = MIXED
end
return { 'exists', known }
