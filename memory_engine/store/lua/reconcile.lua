-- reconcile.lua: recompute a memory's counters from its list and fix them where they drifted.
-- Messages are never removed here: a list without metadata gets its metadata rebuilt.
--
-- KEYS[1] msgs  LIST
-- KEYS[2] meta  HASH
--
-- ARGV[1] now
--
-- Returns {fixed (number of fields corrected), message_count, token_count}

local items = redis.call('LRANGE', KEYS[1], 0, -1)
local count, tokens, systems, maxseq = #items, 0, 0, 0
for _, raw in ipairs(items) do
  local s, t = string.match(raw, '^{"s":(%d+),"t":(%d+)')
  if s then
    tokens = tokens + tonumber(t)
    if tonumber(s) > maxseq then maxseq = tonumber(s) end
  end
  if string.match(raw, '^{"s":%d+,"t":%d+,"r":"system"') then
    systems = systems + 1
  end
end

if redis.call('EXISTS', KEYS[2]) == 0 then
  if count == 0 then return {0, 0, 0} end
  redis.call('HSET', KEYS[2], 'created_at', ARGV[1], 'epoch', 0, 'seq', maxseq,
    'message_count', count, 'token_count', tokens, 'system_count', systems, 'updated_at', ARGV[1])
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
  return {4, count, tokens}
end

local fixed = 0
local want = {message_count = count, token_count = tokens, system_count = systems}
for field, value in pairs(want) do
  if (tonumber(redis.call('HGET', KEYS[2], field)) or 0) ~= value then
    redis.call('HSET', KEYS[2], field, value)
    fixed = fixed + 1
  end
end
if (tonumber(redis.call('HGET', KEYS[2], 'seq')) or 0) < maxseq then
  redis.call('HSET', KEYS[2], 'seq', maxseq)
  fixed = fixed + 1
end
if fixed > 0 then redis.call('HINCRBY', KEYS[2], 'epoch', 1) end
return {fixed, count, tokens}
