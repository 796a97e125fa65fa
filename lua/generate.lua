-- generate.lua: make a generated batch in one step: its record, with the generation's spec
-- and status, and its job, which the jobs round of any app process then claims (job.lua).
--
-- KEYS: batches       every batch id (a sorted set, score 0: paged by id)
--       record        the batch's record ({ns}:batch:<id>, a hash)
--       jobs          the jobs ({ns}:jobs: "<kind> <batch>" -> lease end ms)
--       owners        who holds each job's lease ({ns}:jobowners)
-- ARGV: batch         the batch id (validated: 1-64 of [A-Za-z0-9_.-])
--       job           the job, "generate <batch>"
--       stamp         the record's field that takes Redis's time (ms): its creation time
--       fields        the record's other fields and their values, in pairs (generation.py
--                     names them: type, source, the spec, status and count, a cap)
--
-- A batch that exists (recorded or listed) is left as it is. Nothing here is ever half made:
-- a generation's batch has its job from the moment it exists.
-- Returns {"ok"}, or {"batch_conflict"} when the batch exists.
-- Uses now_ms() from lib.lua.

if redis.call('EXISTS', record) == 1 or redis.call('ZSCORE', batches, batch) then
  return { 'batch_conflict' }
end
redis.call('ZADD', batches, 0, batch)
redis.call('HSET', record, stamp, now_ms(), unpack(fields))
redis.call('ZADD', jobs, 0, job)
redis.call('HDEL', owners, job)
return { 'ok' }
