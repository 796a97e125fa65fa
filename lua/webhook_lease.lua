-- webhook_lease.lua: the lease on one audit stream's webhook deliveries (http/delivery.py): the
-- process that holds it delivers that stream's events to the endpoint, in stream order.
--
-- KEYS: lease         the endpoint's lease on this slot's stream ({ns}:hook:lease:<endpoint>)
-- ARGV: action        "hold": take the lease if it is free, or renew it if `owner` holds it;
--                     "release": give it up if `owner` holds it
--       owner         the deliverer (its process name and a random part)
--       lease_ms      how long a hold lasts unless renewed
--
-- Returns 1 if done (held, or released), 0 if another owner holds the lease (or, to release,
-- nobody does).
-- Uses nothing from lib.lua.

local holder = redis.call('GET', lease)
if action == 'hold' then
  if holder and holder ~= owner then return 0 end
  redis.call('SET', lease, owner, 'PX', lease_ms)
  return 1
end
if holder ~= owner then return 0 end
redis.call('DEL', lease)
return 1
