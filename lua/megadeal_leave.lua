-- megadeal_leave.lua: give up a ticket (served, timed out or failed) and wake the waiters
-- that may now be admitted.
--
-- KEYS: queue, alive, slots, window, heard  as in megadeal_enter.lua
--       record        (optional) the Idempotency-Key's record: dropped if this ticket still
--                     owns it without a reply (the request failed: a retry runs again)
-- ARGV: ticket        the ticket leaving
--       wake_prefix   key prefix of wake lists (a waiter's list is wake_prefix .. ticket)
--       max_concurrent, rate, window_ms  the limits: slots at once, admissions per window
--       keep_ms       how long a wake-up is kept for its waiter
--       fp, ttl_ms    with `record`: unused here
--
-- Pushes "1" to the wake list of each of the first min(free slots, free window places)
-- tickets in the queue; those waiting for a slot are blocked on that list.
-- Returns the number of waiters woken.
-- Uses now_ms() and wake_waiters() from lib.lua.


local now = now_ms()
redis.call('ZREM', queue, ticket)
redis.call('ZREM', alive, ticket)
redis.call('ZREM', heard, ticket)
redis.call('ZREM', slots, ticket)
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
if record then
  local r = redis.call('HMGET', record, R_OWNER, R_REPLY)
  if r[1] == ticket and not r[2] then redis.call('DEL', record) end
end

return wake_waiters(queue, slots, window, wake_prefix, max_concurrent, rate, window_ms, keep_ms, now)
