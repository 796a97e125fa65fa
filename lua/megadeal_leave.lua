-- megadeal_leave.lua: give up a ticket (served, timed out or failed) and wake the waiters
-- that may now be admitted.
--
-- KEYS[1]  queue      KEYS[2] waiter heartbeats      KEYS[3] slots
-- KEYS[4]  admissions in the window
-- ARGV[1]  ticket
-- ARGV[2]  key prefix of wake lists (a waiter's list is ARGV[2] .. ticket)
-- ARGV[3]  max concurrent     ARGV[4] max admissions per window     ARGV[5] window ms
-- ARGV[6]  how long a wake-up is kept for its waiter, ms
--
-- Pushes "1" to the wake list of each of the first min(free slots, free window places)
-- tickets in the queue; those waiting for a slot are blocked on that list.
-- Returns the number of waiters woken.
-- Uses now_ms() from lib.lua.

local queue, alive, slots, window = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
redis.call('ZREM', queue, ARGV[1])
redis.call('ZREM', alive, ARGV[1])
redis.call('ZREM', slots, ARGV[1])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)

local free_slots = tonumber(ARGV[3]) - redis.call('ZCARD', slots)
local free_rate = tonumber(ARGV[4]) - redis.call('ZCOUNT', window, '(' .. (now - tonumber(ARGV[5])), '+inf')
local n = math.min(free_slots, free_rate)
if n <= 0 then
  return 0
end
local woken = redis.call('ZRANGE', queue, 0, n - 1)
for _, ticket in ipairs(woken) do
  local key = ARGV[2] .. ticket
  redis.call('RPUSH', key, '1')
  redis.call('PEXPIRE', key, ARGV[6])
end
return #woken
