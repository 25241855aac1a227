-- context.lua: what Memory.context() needs, in one round trip (reads only).
--
-- KEYS[1] msgs     LIST   JSON messages
-- KEYS[2] meta     HASH   message_count, token_count, system_count
-- KEYS[3] summary  HASH   running summary
--
-- ARGV[1] budget   tokens; -1 = no budget (the whole list is the tail)
--
-- Returns {summary, tail_start, tail, systems}:
--   summary    the summary hash as a flat HGETALL array
--   tail_start list index of the tail's first element (0: the tail is the whole list)
--   tail       the shortest suffix of the list whose non-system messages hold more than `budget`
--              tokens, or the whole list. The window's newest messages are a suffix of whole
--              units within the budget, so they never reach past it.
--   systems    the system messages before the tail, oldest first: read from the head until the
--              list's system_count is reached (flushes never remove them, so they are usually
--              first).
--
-- Each element's token count and role come from its first fields ('{"s":N,"t":T,"r":"role"',
-- the order memory_engine/messages.py guarantees), so nothing is decoded here. The first read is
-- sized from the memory's average tokens per message: usually one LRANGE covers the budget.

local budget = tonumber(ARGV[1])
local m = redis.call('HMGET', KEYS[2], 'message_count', 'token_count', 'system_count')
local summary = redis.call('HGETALL', KEYS[3])
local len = redis.call('LLEN', KEYS[1])
local system_count = tonumber(m[3]) or 0
local PREFIX = '^{"s":%d+,"t":(%d+),"r":"(%a+)"'

local tail, start, in_tail = {}, len, 0
if budget < 0 then
  tail = redis.call('LRANGE', KEYS[1], 0, -1)
  start = 0
  in_tail = system_count -- the caller finds them in the tail
else
  local count, tokens = tonumber(m[1]) or 0, tonumber(m[2]) or 0
  local per_message = 16
  if count > 0 and tokens > 0 then per_message = tokens / count end
  local chunk = math.ceil(budget / per_message * 1.25) + 8
  local newest_first = {}
  local sum = 0
  while start > 0 and sum <= budget do
    local lo = math.max(0, start - chunk)
    local items = redis.call('LRANGE', KEYS[1], lo, start - 1)
    for i = #items, 1, -1 do
      local raw = items[i]
      newest_first[#newest_first + 1] = raw
      start = start - 1
      local t, role = string.match(raw, PREFIX)
      if role == 'system' then
        in_tail = in_tail + 1
      else
        sum = sum + (tonumber(t) or 0)
        if sum > budget then break end
      end
    end
    chunk = chunk * 2
  end
  for i = #newest_first, 1, -1 do
    tail[#tail + 1] = newest_first[i]
  end
end

local systems = {}
local need = system_count - in_tail
local pos = 0
while need > 0 and pos < start do
  local last = math.min(start, pos + 32) - 1
  local items = redis.call('LRANGE', KEYS[1], pos, last)
  for _, raw in ipairs(items) do
    local _, role = string.match(raw, PREFIX)
    if role == 'system' then
      systems[#systems + 1] = raw
      need = need - 1
    end
  end
  if #items == 0 then break end
  pos = pos + #items
end

return {summary, start, tail, systems}
