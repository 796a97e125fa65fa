-- user_coupons.lua: a page of the coupons a user holds, newest allocation first.
--
-- KEYS: listings      the user's listing of each type (code -> allocated_at ms), and their
--                     lapsed listing of each (holds that ended unconfirmed), any order
-- ARGV: prefix        key prefix of coupon hashes
--       user          the user id
--       limit         most entries on the page
--       after_ms, after_code  the cursor: the last entry of the previous page, or "" ""
--
-- The listings are merged newest first (ties: the greater code first, as ZRANGE REV).
-- An entry whose coupon is gone (the purge deleted it: expired, never redeemed) is removed
-- from its listing when a page meets it, and not listed.
-- Returns {next_ms, next_code, then per entry: code, allocated_at ms, type, discount kind,
-- discount value, expires_at ms, holder record, metadata JSON or ""}; next_ms is "" when
-- nothing follows.
-- Reads at most limit + 1 entries of each listing and, where the cursor's entry is gone,
-- the entries of that listing allocated in the same millisecond as it.

local holder = F_HOLDER .. user

-- The rank (newest first) in `listing` of the first entry after the cursor.
local function start_of(listing)
  if after_code == '' then return 0 end
  local score = redis.call('ZSCORE', listing, after_code)
  if score and tonumber(score) == tonumber(after_ms) then
    return redis.call('ZREVRANK', listing, after_code) + 1
  end
  local start = redis.call('ZCOUNT', listing, '(' .. after_ms, '+inf')
  for _, code in ipairs(redis.call('ZRANGE', listing, after_ms, after_ms, 'BYSCORE')) do
    if code > after_code then start = start + 1 end
  end
  return start
end

local entries = {}
for _, listing in ipairs(listings) do
  local start = start_of(listing)
  local found = redis.call('ZRANGE', listing, start, start + limit, 'REV', 'WITHSCORES')
  for i = 1, #found, 2 do
    entries[#entries + 1] = { code = found[i], at = tonumber(found[i + 1]), listing = listing }
  end
end
table.sort(entries, function(a, b)
  if a.at ~= b.at then return a.at > b.at end
  return a.code > b.code
end)

local result = { '', '' }
for i = 1, math.min(#entries, limit) do
  local e = entries[i]
  local c = redis.call('HMGET', prefix .. e.code, F_TYPE, F_DISCOUNT_KIND, F_DISCOUNT_VALUE, F_EXPIRES, holder,
    F_METADATA)
  if c[1] and c[5] then
    for _, v in ipairs({ e.code, e.at, c[1], c[2], c[3], c[4], c[5], c[6] or '' }) do result[#result + 1] = v end
  else
    redis.call('ZREM', e.listing, e.code)
  end
  if #entries > limit then result[1], result[2] = e.at, e.code end
end
return result
