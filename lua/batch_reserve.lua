-- batch_reserve.lua: in the main slot, take (or give back) one redemption of a capped
-- batch's count, for a redemption (or rollback) in a shard, which cannot reach this record.
--
-- KEYS: record        the batch's record ({ns}:batch:<id>)
-- ARGV: delta         1 to take one (before the redemption), -1 to give one back (after a
--                     rollback, or a redemption that failed after all)
--
-- Returns {"ok"}, or {"batch_exhausted"} when taking one would pass the cap. A batch
-- without a cap (any more) counts nothing. A process that dies between a reservation and
-- its redemption leaves the count one too high: the cap may then refuse one redemption too
-- many, never allow one too many.

local r = redis.call('HMGET', record, A_MAX_REDEMPTIONS, A_REDEEMED)
if not r[1] then return { 'ok' } end
if delta > 0 and tonumber(r[2] or '0') >= tonumber(r[1]) then return { 'batch_exhausted' } end
redis.call('HINCRBY', record, A_REDEEMED, delta)
return { 'ok' }
