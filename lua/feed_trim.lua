-- feed_trim.lua: trim one audit stream to what its consumer groups still need (feeds.py).
--
-- KEYS: stream        the slot's audit stream ({ns}:audit)
--       dropped       the slot's count of entries dropped though a group needed them
--                     ({ns}:audit:dropped)
-- ARGV: keep          AUDIT_MAX_LEN: the newest entries kept whatever the groups need
--       bound         FEED_MAX_LEN: the most entries kept for the groups
--
-- A group needs its oldest pending entry (delivered, not acknowledged) and every entry after
-- it, or, with nothing pending, the first entry after the last one delivered to it and on. Entries no
-- group needs go, the newest `keep` excepted (whole stream nodes only, so a few more may
-- stay). Then, beyond `bound`, the oldest entries go though a group needs them: each of those
-- is counted in `dropped`. Without groups it does nothing (the writes trim to AUDIT_MAX_LEN).
-- Work: a call per group, and the entries it removes (an interval's worth).
-- Returns {entries removed that no group needed, entries dropped that one did, the oldest id
-- still needed or "", then the names of the groups that lost entries}.
-- Uses nothing from lib.lua.

local NODE_SLACK = 1000 -- at most this many entries no group needs are looked for past the bound

local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function before(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

if redis.call('EXISTS', stream) == 0 then return { 0, 0, '' } end
local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then return { 0, 0, '' } end
local need, needs = nil, {}
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local from
  if tonumber(info['pending']) > 0 then
    from = redis.call('XPENDING', stream, info['name'])[2]
  else
    local following = redis.call('XRANGE', stream, '(' .. info['last-delivered-id'], '+', 'COUNT', 1)[1]
    if following then
      from = following[1]
    else
      local ms, seq = parse(info['last-delivered-id'])
      from = string.format('%d-%d', ms, seq + 1)
    end
  end
  needs[#needs + 1] = { info['name'], from }
  if not need or before(from, need) then need = from end
end
local length = redis.call('XLEN', stream)
local removed = 0
if length > keep then
  removed = redis.call('XTRIM', stream, 'MINID', '~', need, 'LIMIT', length - keep)
  length = length - removed
end
local dropped_count = 0
if length > bound then
  local excess = length - bound
  local unneeded = #redis.call('XRANGE', stream, '-', '(' .. need, 'COUNT', math.min(excess, NODE_SLACK))
  local gone = redis.call('XTRIM', stream, 'MAXLEN', '=', bound)
  removed = removed + math.min(unneeded, gone)
  dropped_count = gone - math.min(unneeded, gone)
  if dropped_count > 0 then redis.call('INCRBY', dropped, dropped_count) end
end
local reply = { removed, dropped_count, need }
if dropped_count > 0 then
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  for _, n in ipairs(needs) do
    if first and before(n[2], first[1]) then reply[#reply + 1] = n[1] end
  end
end
return reply
