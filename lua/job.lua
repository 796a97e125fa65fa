-- job.lua: a batch's background job (tidying after a disable or enable, a generation), run by
-- whichever app process holds its lease, and taken over by another once the lease runs out.
--
-- KEYS: jobs          the jobs ({ns}:jobs, a sorted set: "<kind> <batch>" -> lease end ms)
--       owners        who holds each job's lease ({ns}:jobowners, a hash)
-- ARGV: action        "claim": take the job if its lease has run out;
--                     "renew": extend the lease if `owner` still holds it;
--                     "finish": drop the job if `owner` still holds it;
--                     "start": (re)start the job now, whoever held it (its runner stops at
--                     its next renewal)
--       job           "<kind> <batch>"
--       owner         the runner (a process and a random part)
--       lease_ms      how long a claim or renewal holds the job
--
-- Returns 1 if done, 0 if not (the job is someone else's, or gone, or not due).
-- Uses now_ms() from lib.lua.

local now = now_ms()
if action == 'start' then
  redis.call('ZADD', jobs, 0, job)
  redis.call('HDEL', owners, job)
  return 1
end
local lease = redis.call('ZSCORE', jobs, job)
if not lease then return 0 end
if action == 'claim' then
  if tonumber(lease) > now then return 0 end
elseif redis.call('HGET', owners, job) ~= owner then
  return 0
end
if action == 'finish' then
  redis.call('ZREM', jobs, job)
  redis.call('HDEL', owners, job)
else
  redis.call('ZADD', jobs, now + lease_ms, job)
  redis.call('HSET', owners, job, owner)
end
return 1
