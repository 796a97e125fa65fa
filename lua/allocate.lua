-- allocate.lua: reserve one usage of an available, unexpired coupon for a user.
-- (MEGADEAL allocations go through megadeal_enter.lua instead, which adds the limits.)
--
-- KEYS[1]  available set of the requested type (sorted set: code -> expires_at ms)
-- KEYS[2]  exhausted set (sorted set: code -> expires_at ms of coupons with no free usage)
-- KEYS[3]  stats hash
-- KEYS[4]  audit stream
-- ARGV[1]  key prefix of coupon hashes (the coupon's key is ARGV[1] .. code; it shares
--          the hash tag of KEYS, so the script stays within one cluster slot)
-- ARGV[2]  user id
-- ARGV[3]  coupon type (for the "<TYPE>:allocated" counter)
-- ARGV[4]  audit stream length cap (approximate)
--
-- The coupon that expires first is handed out first, skipping coupons this user already
-- holds. A coupon moves from the available set to the exhausted set when its last usage
-- is reserved.
--
-- Returns {"ok", code, discount kind, discount value, expires_at ms, allocated_at ms}
--      or {"pool_empty"} when no unexpired coupon with a free usage is left for this user.
-- Writes one audit entry: op=allocate, type, user_id, and code or error.
-- Uses now_ms(), allocate_one() and audit() from lib.lua.

local result = allocate_one(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], now_ms())
audit_allocation(KEYS[4], ARGV[4], ARGV[3], ARGV[2], result)
return result
