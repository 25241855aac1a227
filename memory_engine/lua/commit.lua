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
-- ARGV[12] n_drop
-- ARGV[13] n_summarize
-- ARGV[14 ..] n_drop seqs to drop, then n_summarize seqs folded into the summary
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

local n_drop = tonumber(ARGV[12])
local n_summ = tonumber(ARGV[13])
local kind = {}
for i = 1, n_drop do kind[tonumber(ARGV[13 + i])] = 1 end
for i = 1, n_summ do kind[tonumber(ARGV[13 + n_drop + i])] = 2 end

local items = redis.call('LRANGE', KEYS[1], 0, -1)
local removed_idx = {}
local dropped, summarized, tokens = 0, 0, 0
local prefix = true
local removed_seqs = {}
for i, raw in ipairs(items) do
  local s, t = string.match(raw, '^{"s":(%d+),"t":(%d+)')
  local k = kind[tonumber(s)]
  if k then
    removed_idx[#removed_idx + 1] = i - 1
    removed_seqs[#removed_seqs + 1] = s
    tokens = tokens + tonumber(t)
    if k == 1 then dropped = dropped + 1 else summarized = summarized + 1 end
    if #removed_idx ~= i then prefix = false end
  end
end

local removed = #removed_idx
if removed > 0 then
  if prefix then
    redis.call('LTRIM', KEYS[1], removed, -1)
  else
    -- A tombstone can never equal a stored message: those all start with '{"s":'.
    for _, idx in ipairs(removed_idx) do
      redis.call('LSET', KEYS[1], idx, '~tomb~')
    end
    redis.call('LREM', KEYS[1], 0, '~tomb~')
  end
  for i = 1, #removed_seqs, 512 do
    redis.call('ZREM', KEYS[4], unpack(removed_seqs, i, math.min(i + 511, #removed_seqs)))
  end
end

local count = redis.call('HINCRBY', KEYS[2], 'message_count', -removed)
local total = redis.call('HINCRBY', KEYS[2], 'token_count', -tokens)
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
