-- allocate.lua: reserve one usage of an available, unexpired coupon for a user.
-- (MEGADEAL allocations go through megadeal_enter.lua instead, which adds the limits.)
--
-- KEYS: available     the available set of the requested type (code -> expires_at ms)
--       exhausted     coupons with no free usage (code -> expires_at ms)
--       stats         the stats hash
--       audit_stream  the audit stream
--       held          the user's held set of this type (see first_unheld in lib.lua)
--       listing       the user's coupons of this type (code -> allocated_at ms)
--       draining      this type's coupons with no free usage still listed in held sets
--       due           this type's timers: holds and starts (see settle in lib.lua)
--       record        (optional) the Idempotency-Key's record
-- ARGV: prefix        key prefix of coupon hashes (a coupon's key is prefix .. code; it
--                     shares the hash tag of KEYS, so the script stays in one cluster slot)
--       user          the user id
--       ctype         the coupon type (for the "<TYPE>:allocated" counter)
--       audit_cap     audit stream length cap (approximate)
--       max_per_user  most coupons of the type a user may hold; 0: no limit
--       held_prefix   key prefix of this type's held sets ({ns}:held:<TYPE>:)
--       tracked_prefix  key prefix of the coupons' tracked sets ({ns}:trk:)
--       slot          the prefix of the slot's keys ({ns}:), for settle()
--       hold_ms       > 0: hold the usage this long (at most until the coupon expires), not
--                     for good (see allocate_one in lib.lua); 0: allocate it for good
--       fp, ttl_ms    with `record`: the request's fingerprint, and how long to keep it
--
-- First, the type's due timers are carried out (holds past their deadline back to the pool,
-- scheduled coupons whose start came into it), a bounded number (allocate_settled in lib.lua).
-- The coupon that expires first is handed out first, skipping coupons this user already
-- holds. A coupon moves from the available set to the exhausted set when its last usage
-- is reserved.
--
-- Returns {"ok", code, discount kind, discount value, expires_at ms, allocated_at ms,
--          hold deadline ms or "", metadata JSON or ""}
--      or {"pool_empty"} when no unexpired coupon with a free usage is left for this user,
--      or {"user_limit_reached"},
--      or {"retry"} when it set aside many disabled coupons (first_unheld in lib.lua): nothing
--      allocated, no audit entry nor record; call again (each call moves some out of the way);
--      with a record: {"replay", stored reply as JSON}, {"idempotency_key_reused"}.
-- Writes one audit entry: op=allocate, type, user_id, and code or error.
-- Uses now_ms(), allocate_settled(), audit_allocation(), idem_lookup(), idem_store() from
-- lib.lua.

local k = { available = available, exhausted = exhausted, stats = stats, held = held, listing = listing,
    draining = draining, held_prefix = held_prefix, tracked_prefix = tracked_prefix, user = user, due = due,
    slot = slot, hold_ms = hold_ms }
local now = now_ms()

local found = idem_lookup(record, fp, '', now)
if found then return found end
local result = allocate_settled(k, prefix, ctype, max_per_user, now, audit_cap)
if result[1] == 'retry' then return result end  -- disabled coupons set aside: call again
audit_allocation(audit_stream, audit_cap, ctype, user, result)
idem_store(record, fp, ttl_ms, result)
return result
