-- upload.lua: store a chunk of new coupons; codes that already exist are skipped.
--
-- KEYS[1]      stats hash (counters "<TYPE>:created", ...)
-- KEYS[2..4]   available sets for FREE, STANDARD, MEGADEAL (sorted set: code -> expires_at ms)
-- KEYS[5]      audit stream
-- ARGV[1]      key prefix of coupon hashes (a coupon's key is ARGV[1] .. code; it shares
--              the hash tag of KEYS, so the script stays within one cluster slot)
-- ARGV[2]      audit stream length cap (approximate)
-- ARGV[3]      upload id, ARGV[4] this chunk as "i/n" (for the audit entry)
-- ARGV[5..]    one coupon each, as "code type kind value expires_at_ms max_usages"
--              (space-separated; no field can hold a space)
--
-- Returns {created, i, j, ...}: the number stored, then the 1-based positions in this
-- chunk of the coupons not stored because their code already existed (in Redis, or
-- earlier in the same chunk).
-- Errors: none of its own; the caller validates every value beforehand.
-- Writes one audit entry: op=upload, upload, part, created, duplicates.
-- Uses now_ms() and audit() from lib.lua.

local available = { FREE = KEYS[2], STANDARD = KEYS[3], MEGADEAL = KEYS[4] }
local created_ms = now_ms()

local created = 0
local created_by_type = {}
local duplicates = {}

for i = 5, #ARGV do
  local code, ctype, kind, value, expires, max =
      string.match(ARGV[i], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  local key = ARGV[1] .. code
  if redis.call('EXISTS', key) == 1 then
    duplicates[#duplicates + 1] = i - 4
  else
    redis.call('HSET', key, 'type', ctype, 'dk', kind, 'dv', value, 'exp', expires,
      'max', max, 'alloc', 0, 'used', 0, 'ct', created_ms)
    redis.call('ZADD', available[ctype], expires, code)
    created = created + 1
    created_by_type[ctype] = (created_by_type[ctype] or 0) + 1
  end
end

for ctype, n in pairs(created_by_type) do
  redis.call('HINCRBY', KEYS[1], ctype .. ':created', n)
end

audit(KEYS[5], ARGV[2], 'op', 'upload', 'upload', ARGV[3], 'part', ARGV[4],
  'created', created, 'duplicates', #duplicates)

local result = { created }
for _, i in ipairs(duplicates) do result[#result + 1] = i end
return result
