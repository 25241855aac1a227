-- append.lua: append N messages to one memory atomically (all or none).
--
-- KEYS[1] msgs     LIST   JSON messages
-- KEYS[2] meta     HASH   counters (message_count, token_count, seq, epoch, ...)
-- KEYS[3] summary  HASH   running summary (only its TTL is touched here)
-- KEYS[4] used     ZSET   LRU use times (only its TTL is touched here)
-- KEYS[5] flush    STRING flush marker
-- KEYS[6] archive  LIST   removed messages (written only by the ceiling, only when enabled)
--
-- ARGV[1] ttl_ms          sliding TTL for every key of the memory; 0 = no expiry
-- ARGV[2] resource_id
-- ARGV[3] token_threshold flush when token_count >= this; 0 = not tracked
-- ARGV[4] msg_threshold   flush when message_count >= this; 0 = not tracked
-- ARGV[5] marker_ttl_ms   TTL of the flush marker (bounds a lost task)
-- ARGV[6] tracks_use      '1' when the resource's strategy records message uses (LRU): the used
--                         ZSET exists only then, so only then is its TTL refreshed
-- ARGV[7] token_ceiling   hard ceiling on token_count; 0 = none
-- ARGV[8] msg_ceiling     hard ceiling on message_count; 0 = none
-- ARGV[9] over_ceiling    'e': evict the oldest messages beyond a ceiling; 'r': refuse the append
-- ARGV[10] archive        '' = archive off (nothing more is done); 'ttl_ms:max' = the ceiling
--                         moves what it evicts to KEYS[6] (max 0 = uncapped, ttl_ms 0 = none)
-- ARGV[11] now            unix time, seconds (float string)
-- ARGV[12] n              number of messages
-- ARGV[13] n_system       how many of them are system messages (context() finds them by count)
-- ARGV[14] tokens         token count of the n messages together (each body carries its own "t")
-- ARGV[15 .. 14+n]        bodies: JSON objects without "s" (seq), each starting with '{'
--
-- ARGV[1..10] depend only on the resource, so the client packs them once with the keys.
--
-- Returns one string "first_seq,last_seq,message_count,token_count,flush,epoch,created,evicted"
-- (a flat string: redis-py decodes it several microseconds faster than an array of integers),
-- where flush is 0 below the threshold, 1 when this append set the flush marker (the caller
-- enqueues a flush), 2 at or over the threshold with a flush already pending (a deduplicated
-- trigger), created is 1 when this append created the memory's metadata (a new memory: the
-- caller makes sure it is in the global indexes), and evicted counts the messages removed to
-- stay under the ceiling. Refused (over the ceiling with 'r'): "R,message_count,token_count",
-- and nothing was written. Erased ("E": meta holds an erasure tombstone, erase.lua): nothing
-- was written.
--
-- The ceiling (a bound for when no flush runs, e.g. no worker) is enforced after the push: the
-- oldest messages go, as units (an assistant message with tool_calls together with the tool
-- results that directly follow it), while the memory is over a ceiling. System messages stay, and
-- so do the messages of this append (a unit reaching into them stops the walk). The walk reads at
-- most 2n + 64 elements, so an append costs O(n) even for a memory far over its ceiling (one
-- stored before the ceiling existed): it converges over the next appends. An eviction moves the
-- list's positions but does not bump the epoch: an in-flight flush must still commit (appends
-- that outpace a slow summary would otherwise starve every flush). commit.lua matches its plan by
-- seq, so it removes and counts only the planned messages still there; those the ceiling took
-- are counted once, as evicted.
--
-- Cost (server time is on every append's critical path; bench/profile_append.py reports it from
-- INFO commandstats): one HMGET and one HSET instead of an HINCRBY per counter, and no PEXPIRE of
-- a key that does not exist: the summary HASH holds a summary when meta's summary_tokens is
-- positive (commit.lua writes both in one script; clear and replace drop both), the used ZSET
-- exists only for resources that track use (ARGV[6]).

local ttl_ms = tonumber(ARGV[1])
local tok_ceiling = tonumber(ARGV[7])
local msg_ceiling = tonumber(ARGV[8])
local n = tonumber(ARGV[12])
local m = redis.call('HMGET', KEYS[2], 'seq', 'message_count', 'token_count', 'summary_tokens',
  'epoch', 'created_at', 'erased')
if m[7] then
  return 'E'
end

-- Counters as integers (string.format): a Lua number would reach Redis as "%.17g".
local count = (tonumber(m[2]) or 0) + n
local total = (tonumber(m[3]) or 0) + tonumber(ARGV[14])
local function over(c, t)
  return (msg_ceiling > 0 and c > msg_ceiling) or (tok_ceiling > 0 and t > tok_ceiling)
end
if ARGV[9] == 'r' and over(count, total) then
  return string.format('R,%d,%d', count - n, total - tonumber(ARGV[14]))
end

local first = (tonumber(m[1]) or 0) + 1
local seq = first + n - 1
local batch = {}
for i = 1, n do
  -- splice seq in as the first field: '{"s":N,' .. rest of the body after '{'
  batch[#batch + 1] = '{"s":' .. (first + i - 1) .. ',' .. string.sub(ARGV[14 + i], 2)
  if #batch == 512 then
    redis.call('RPUSH', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('RPUSH', KEYS[1], unpack(batch))
end

local epoch = tonumber(m[5]) or 0
local created = 0
if not m[6] then
  -- no created_at: a new memory (or metadata lost): start its incarnation
  created = 1
  epoch = 0
end

local evicted = 0
if over(count, total) then
  -- Walk the oldest elements (before this append's), in chunks, cutting whole units.
  local old = redis.call('LLEN', KEYS[1]) - n
  local budget = 2 * n + 64
  local chunk, chunk_at = {}, 0
  local function at(i)
    if i >= old then return nil end
    if i < chunk_at or i >= chunk_at + #chunk then
      chunk_at = i
      chunk = redis.call('LRANGE', KEYS[1], i, math.min(i + 31, old - 1))
    end
    return chunk[i - chunk_at + 1]
  end
  local function head(raw)
    local s, t, role = string.match(raw, '^{"s":(%d+),"t":(%d+),"r":"(%a+)"')
    return s, tonumber(t) or 0, role
  end
  local function has_calls(raw)
    -- "k" (tool_calls) precedes "m" (metadata) in a stored body, and no JSON string holds ',"'
    local k = string.find(raw, ',"k":', 1, true)
    local md = string.find(raw, ',"m":', 1, true)
    return k ~= nil and (md == nil or k < md)
  end
  local kept, removed_seqs, removed_tokens = {}, {}, 0
  local archiving = ARGV[10] ~= ''
  local removed_raws = {}
  local pos = 0
  while over(count - evicted, total - removed_tokens) and pos < old and budget > 0 do
    local raw = at(pos)
    local s, t, role = head(raw)
    budget = budget - 1
    if role == 'system' then
      kept[#kept + 1] = raw
      pos = pos + 1
    else
      local stop = pos + 1
      local unit_tokens = t
      local unit_seqs = {s}
      local unit_raws = {raw}
      if role == 'assistant' and has_calls(raw) then
        while true do
          local nxt = stop < old and at(stop) or redis.call('LINDEX', KEYS[1], stop)
          local ns, nt, nrole = head(nxt or '')
          if nrole ~= 'tool' then break end
          if stop >= old then stop = -1; break end  -- its results are in this append: keep it
          unit_tokens = unit_tokens + nt
          unit_seqs[#unit_seqs + 1] = ns
          if archiving then unit_raws[#unit_raws + 1] = nxt end
          stop = stop + 1
          budget = budget - 1
        end
      end
      if stop < 0 then break end
      evicted = evicted + (stop - pos)
      removed_tokens = removed_tokens + unit_tokens
      for _, x in ipairs(unit_seqs) do removed_seqs[#removed_seqs + 1] = x end
      if archiving then
        for _, x in ipairs(unit_raws) do removed_raws[#removed_raws + 1] = x end
      end
      pos = stop
    end
  end
  if evicted > 0 then
    -- Cut the walked head and push back the system messages met on the way (in order). This
    -- append's messages follow the cut, so the list never empties (its TTL stays).
    redis.call('LTRIM', KEYS[1], pos, -1)
    for i = #kept, 1, -512 do
      local part = {}
      for j = i, math.max(1, i - 511), -1 do part[#part + 1] = kept[j] end
      redis.call('LPUSH', KEYS[1], unpack(part))
    end
    if ARGV[6] == '1' then
      for i = 1, #removed_seqs, 512 do
        redis.call('ZREM', KEYS[4], unpack(removed_seqs, i, math.min(i + 511, #removed_seqs)))
      end
    end
    count = count - evicted
    total = total - removed_tokens
    redis.call('HINCRBY', KEYS[2], 'evicted', evicted)
    if archiving then
      -- The evicted elements, in list order, with the reason and time (see commit.lua).
      local ttl, cap = string.match(ARGV[10], '^(%d+):(%d+)$')
      local tail = ',"why":"evicted","at":' .. ARGV[11] .. '}'
      for i = 1, #removed_raws, 512 do
        local part = {}
        for j = i, math.min(i + 511, #removed_raws) do
          part[#part + 1] = string.sub(removed_raws[j], 1, -2) .. tail
        end
        redis.call('RPUSH', KEYS[6], unpack(part))
      end
      redis.call('HINCRBY', KEYS[2], 'archived', #removed_raws)
      if tonumber(cap) > 0 then redis.call('LTRIM', KEYS[6], -tonumber(cap), -1) end
      if tonumber(ttl) > 0 then redis.call('PEXPIRE', KEYS[6], ttl) end
    end
  end
end

local fields = {'seq', string.format('%d', seq), 'message_count', string.format('%d', count),
  'token_count', string.format('%d', total), 'updated_at', ARGV[11], 'ttl_ms', ARGV[1]}
if created == 1 then
  fields[#fields + 1] = 'created_at'
  fields[#fields + 1] = ARGV[11]
  fields[#fields + 1] = 'resource_id'
  fields[#fields + 1] = ARGV[2]
end
if created == 1 then
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = string.format('%d', epoch)
end
redis.call('HSET', KEYS[2], unpack(fields))
if ARGV[13] ~= '0' then redis.call('HINCRBY', KEYS[2], 'system_count', ARGV[13]) end

local summary_tokens = tonumber(m[4]) or 0
if ttl_ms > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  if summary_tokens > 0 then redis.call('PEXPIRE', KEYS[3], ttl_ms) end
  if ARGV[6] == '1' then redis.call('PEXPIRE', KEYS[4], ttl_ms) end
end

-- the summary is part of what a memory costs in a prompt, so it counts toward the threshold
local requested = 0
local tok_thr = tonumber(ARGV[3])
local msg_thr = tonumber(ARGV[4])
if (tok_thr > 0 and total + summary_tokens >= tok_thr) or (msg_thr > 0 and count >= msg_thr) then
  if redis.call('SET', KEYS[5], ARGV[11], 'NX', 'PX', ARGV[5]) then
    requested = 1
  else
    requested = 2
  end
end

return string.format('%d,%d,%d,%d,%d,%d,%d,%d', first, seq, count, total, requested, epoch,
  created, evicted)
