-- megadeal_forget.lua: drop the MEGADEAL waiters of app processes that are gone, and wake
-- the waiters that may now be admitted.
--
-- A waiter whose process stops calling leaves the queue after silent_ms (see
-- megadeal_enter.lua) and takes its place back when it calls again. A process that died
-- never calls again: so every app process, once a second, lists the processes whose Redis
-- connections are open (CLIENT LIST: a killed process's connections close at once, a
-- paused one's stay) and passes them here, and their waiters go at once.
--
-- KEYS: queue, alive, slots, window, heard  as in megadeal_enter.lua
-- ARGV: max_number    only tickets numbered up to this are judged (later ones may belong
--                     to a process that started after the list was taken)
--       wake_prefix   key prefix of wake lists
--       max_concurrent, rate, window_ms  the limits: slots at once, admissions per window
--       keep_ms       how long a wake-up is kept for its waiter
--       owners        the owners (app process names) whose connections are open
--
-- Returns the number of tickets dropped.
-- Uses now_ms() and wake_waiters() from lib.lua.

local live = {}
for _, owner in ipairs(owners) do
  live[owner] = true
end

local dropped = 0
for _, ticket in ipairs(redis.call('ZRANGE', queue, '-inf', max_number, 'BYSCORE')) do
  local owner = string.match(ticket, '^%d+:(.*)$')
  if not live[owner] then
    redis.call('ZREM', queue, ticket)
    redis.call('ZREM', alive, ticket)
    redis.call('ZREM', heard, ticket)
    dropped = dropped + 1
  end
end
if dropped > 0 then
  wake_waiters(queue, slots, window, wake_prefix, max_concurrent, rate, window_ms, keep_ms, now_ms())
end
return dropped
