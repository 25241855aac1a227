-- commit.lua: apply a flush or eviction plan: remove exactly the named seqs, optionally write the
-- new running summary, and keep every message appended after the snapshot. Fails cleanly, with
-- nothing changed, when the memory moved under the plan (epoch or incarnation changed) or when
-- the caller no longer holds the memory's lock (fencing).
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH
-- KEYS[3] summary  HASH
-- KEYS[4] used     ZSET
-- KEYS[5] lock     STRING owner token
-- KEYS[6] flush    STRING flush marker
-- KEYS[7] archive  LIST   removed messages (only when ARGV[17] is not '')
--
-- ARGV[1]  expected epoch
-- ARGV[2]  expected created_at (incarnation: a deleted and recreated memory differs)
-- ARGV[3]  lock token; '' = no lock check
-- ARGV[4]  now
-- ARGV[5]  counter field for dropped messages: 'flushed' | 'evicted'
-- ARGV[6]  clear the flush marker: '1' | '0'
-- ARGV[7]  has summary: '1' | '0'
-- ARGV[8]  summary text
-- ARGV[9]  summary token count
-- ARGV[10] summary point (last seq it covers)
-- ARGV[11] summary source
-- ARGV[12] seqs to drop, as runs 'first:last,first:last' (inclusive; '' = none)
-- ARGV[13] seqs folded into the summary, as runs (same form)
-- ARGV[14] window: every named seq is among the list's first `window` elements; 0 = unknown
-- ARGV[15] run position: when all named seqs form one run, the snapshot position of its first
--          seq; -1 otherwise
-- ARGV[16] run tokens: the token counts of that run's messages, summed from the snapshot
-- ARGV[17] archive: '' = off; 'ttl_ms:max' = every removed element is also pushed to KEYS[7]
--          (in list order) with '"why":<reason>,"at":<now>' spliced before its closing brace:
--          reason ARGV[5] for dropped seqs, 'summarized' for folded ones; the archive is then
--          LTRIMmed to its last `max` (0 = uncapped) and given ttl_ms (0 = none). The one-run
--          path then reads the run it cuts (LRANGE): archiving costs that read, nothing else.
--
-- Positions are the snapshot's. Appends add at the tail, and replace, clear and commits bump the
-- epoch, which is checked first; only the append's ceiling (append.lua) removes head elements
-- without bumping it, and then the run's ends no longer carry its seqs. Two paths:
--
-- * one run (a FIFO or summarizing flush: the oldest messages, after any leading system
--   messages): the elements at the run's two ends are checked to carry its first and last seq.
--   Seqs ascend along the list, so the run's elements are then exactly the named seqs, and the
--   commit cuts them without reading them (LTRIM; the few elements before the run, if any, are
--   read and pushed back). The token total comes from the snapshot, whose elements these are.
--   A flush of 500 of 1,000 messages keeps Redis busy ~15 us instead of ~350 us reading and
--   parsing the elements in Lua (appends wait for that);
-- * otherwise, or when the ends do not match (a caller's mistake), the elements up to the
--   window are read and matched against the named seqs (the whole list if the window does not
--   hold them all).
--
-- Runs, not one argument per seq: packing 500 arguments cost the client ~0.5 ms.
--
-- Returns {status, dropped, summarized, tokens_removed, message_count, token_count, epoch}
--   status 1 = committed, -1 = epoch conflict, -2 = lock lost

local meta_epoch = redis.call('HGET', KEYS[2], 'epoch')
local meta_created = redis.call('HGET', KEYS[2], 'created_at')
if meta_epoch ~= ARGV[1] or meta_created ~= ARGV[2] then
  return {-1, 0, 0, 0, 0, 0, tonumber(meta_epoch) or -1}
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[3] then
  return {-2, 0, 0, 0, 0, 0, tonumber(meta_epoch)}
end

local function seq_at(index)
  local raw = redis.call('LINDEX', KEYS[1], index)
  return raw and tonumber(string.match(raw, '^{"s":(%d+)'))
end

-- Put `items` (in list order) back at the head of the list.
local function push_head(items, n)
  local chunk = {}
  for i = n, 1, -1 do
    chunk[#chunk + 1] = items[i]
    if #chunk == 512 or i == 1 then
      redis.call('LPUSH', KEYS[1], unpack(chunk))
      chunk = {}
    end
  end
end

local runs = {}
for k = 1, 2 do
  for first, last in string.gmatch(ARGV[11 + k], '(%d+):(%d+)') do
    runs[#runs + 1] = {tonumber(first), tonumber(last), k}
  end
end

local removed, dropped, summarized, tokens = 0, 0, 0, 0
local removed_seqs = {}
local archiving = ARGV[17] ~= ''
local archived_raws, archived_why = {}, {}
local why_of = {ARGV[5], 'summarized'}
local cut = false
local position = tonumber(ARGV[15])

if #runs == 1 and position >= 0 then
  local first, last, k = runs[1][1], runs[1][2], runs[1][3]
  local count = last - first + 1
  local stop = position + count  -- index just past the run
  if seq_at(position) == first and seq_at(stop - 1) == last then
    local run_raws = nil
    if archiving then run_raws = redis.call('LRANGE', KEYS[1], position, stop - 1) end
    if position == 0 then
      redis.call('LTRIM', KEYS[1], count, -1)
      cut = true
    elseif redis.call('LLEN', KEYS[1]) > stop then
      -- Something survives after the run, so the list never empties (its TTL stays).
      local head = redis.call('LRANGE', KEYS[1], 0, position - 1)
      redis.call('LTRIM', KEYS[1], stop, -1)
      push_head(head, #head)
      cut = true
    end
    if cut then
      removed, tokens = count, tonumber(ARGV[16])
      if k == 1 then dropped = count else summarized = count end
      if run_raws then
        for i, raw in ipairs(run_raws) do
          archived_raws[i] = raw
          archived_why[i] = why_of[k]
        end
      end
      if redis.call('EXISTS', KEYS[4]) == 1 then
        for s = first, last do removed_seqs[#removed_seqs + 1] = string.format('%d', s) end
      end
    end
  end
end

if not cut then
  local kind = {}
  local named = 0
  for _, run in ipairs(runs) do
    for s = run[1], run[2] do
      if not kind[s] then named = named + 1 end
      kind[s] = run[3]
    end
  end
  local removed_idx, kept
  local function scan(last)
    local items = redis.call('LRANGE', KEYS[1], 0, last)
    removed_idx, kept, removed_seqs = {}, {}, {}
    dropped, summarized, tokens = 0, 0, 0
    archived_raws, archived_why = {}, {}
    for i, raw in ipairs(items) do
      local s, t = string.match(raw, '^{"s":(%d+),"t":(%d+)')
      local k = kind[tonumber(s)]
      if k then
        removed_idx[#removed_idx + 1] = i - 1
        removed_seqs[#removed_seqs + 1] = s
        tokens = tokens + tonumber(t)
        if k == 1 then dropped = dropped + 1 else summarized = summarized + 1 end
        if archiving then
          archived_raws[#archived_raws + 1] = raw
          archived_why[#archived_why + 1] = why_of[k]
        end
      else
        kept[#kept + 1] = raw
      end
    end
  end
  local window = tonumber(ARGV[14])
  if named > 0 then
    scan(window > 0 and window - 1 or -1)
    if window > 0 and #removed_idx ~= named then scan(-1) end
  end
  removed = removed_idx and #removed_idx or 0
  if removed > 0 then
    local last = removed_idx[removed]  -- 0-based index of the last removed element
    local kept_before = last + 1 - removed  -- `kept` starts with them, in order
    if kept_before == 0 then
      redis.call('LTRIM', KEYS[1], removed, -1)
    elseif redis.call('LLEN', KEYS[1]) > last + 1 then
      -- Cut up to the last removed element and push back the kept ones before it: O(window).
      redis.call('LTRIM', KEYS[1], last + 1, -1)
      push_head(kept, kept_before)
    else
      -- Nothing survives after the last removed element: trimming would delete the key (and
      -- its TTL), so mark the removed elements and remove the marks. A tombstone can never
      -- equal a stored message: those all start with '{"s":'.
      for _, idx in ipairs(removed_idx) do
        redis.call('LSET', KEYS[1], idx, '~tomb~')
      end
      redis.call('LREM', KEYS[1], 0, '~tomb~')
    end
    if redis.call('EXISTS', KEYS[4]) == 0 then removed_seqs = {} end
  end
end

for i = 1, #removed_seqs, 512 do
  redis.call('ZREM', KEYS[4], unpack(removed_seqs, i, math.min(i + 511, #removed_seqs)))
end

if archiving and #archived_raws > 0 then
  local ttl, cap = string.match(ARGV[17], '^(%d+):(%d+)$')
  for i = 1, #archived_raws, 512 do
    local part = {}
    for j = i, math.min(i + 511, #archived_raws) do
      part[#part + 1] = string.sub(archived_raws[j], 1, -2) .. ',"why":"' .. archived_why[j] ..
        '","at":' .. ARGV[4] .. '}'
    end
    redis.call('RPUSH', KEYS[7], unpack(part))
  end
  redis.call('HINCRBY', KEYS[2], 'archived', #archived_raws)
  if tonumber(cap) > 0 then redis.call('LTRIM', KEYS[7], -tonumber(cap), -1) end
  if tonumber(ttl) > 0 then redis.call('PEXPIRE', KEYS[7], ttl) end
end

-- 0 - n, not -n: Lua's -0 is sent as "-0", which Redis refuses as an integer. Nothing is removed
-- when the append's ceiling took every planned message first (it does not bump the epoch).
local count = redis.call('HINCRBY', KEYS[2], 'message_count', 0 - removed)
local total = redis.call('HINCRBY', KEYS[2], 'token_count', 0 - tokens)
if dropped > 0 then redis.call('HINCRBY', KEYS[2], ARGV[5], dropped) end
if summarized > 0 then redis.call('HINCRBY', KEYS[2], 'summarized', summarized) end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'last_flush_at', ARGV[4])

if ARGV[7] == '1' then
  redis.call('HSET', KEYS[3], 'text', ARGV[8], 'token_count', ARGV[9], 'summary_point', ARGV[10],
    'source', ARGV[11], 'updated_at', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'covered', summarized)
  redis.call('HSET', KEYS[2], 'summary_tokens', ARGV[9])
  local pttl = redis.call('PTTL', KEYS[2])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[3], pttl) end
end
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[6])
end

return {1, dropped, summarized, tokens, count, total, epoch}
