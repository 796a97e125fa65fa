-- allocate.lua: reserve one usage of an available, unexpired coupon for a user.
-- (MEGADEAL allocations go through megadeal_enter.lua instead, which adds the limits.)
--
-- KEYS: available     the available set of the requested type (code -> expires_at ms)
--       exhausted     coupons with no free usage (code -> expires_at ms)
--       stats         the stats hash
--       audit_stream  the audit stream
-- ARGV: prefix        key prefix of coupon hashes (a coupon's key is prefix .. code; it
--                     shares the hash tag of KEYS, so the script stays in one cluster slot)
--       user          the user id
--       ctype         the coupon type (for the "<TYPE>:allocated" counter)
--       audit_cap     audit stream length cap (approximate)
--
-- The coupon that expires first is handed out first, skipping coupons this user already
-- holds. A coupon moves from the available set to the exhausted set when its last usage
-- is reserved.
--
-- Returns {"ok", code, discount kind, discount value, expires_at ms, allocated_at ms}
--      or {"pool_empty"} when no unexpired coupon with a free usage is left for this user.
-- Writes one audit entry: op=allocate, type, user_id, and code or error.
-- Uses now_ms(), allocate_one() and audit_allocation() from lib.lua.

local available, exhausted, stats, audit_stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, user, ctype, audit_cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local result = allocate_one(available, exhausted, stats, prefix, user, ctype, now_ms())
audit_allocation(audit_stream, audit_cap, ctype, user, result)
return result
