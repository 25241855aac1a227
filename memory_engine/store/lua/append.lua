-- append.lua: append N messages to one memory atomically (all or none).
--
-- KEYS[1] msgs     LIST   JSON messages
-- KEYS[2] meta     HASH   counters (message_count, token_count, seq, epoch, ...)
-- KEYS[3] summary  HASH   running summary (only its TTL is touched here)
-- KEYS[4] used     ZSET   LRU use times (only its TTL is touched here)
-- KEYS[5] flush    STRING flush marker
--
-- ARGV[1] ttl_ms          sliding TTL for every key of the memory; 0 = no expiry
-- ARGV[2] resource_id
-- ARGV[3] token_threshold flush when token_count >= this; 0 = not tracked
-- ARGV[4] msg_threshold   flush when message_count >= this; 0 = not tracked
-- ARGV[5] marker_ttl_ms   TTL of the flush marker (bounds a lost task)
-- ARGV[6] tracks_use      '1' when the resource's strategy records message uses (LRU): the used
--                         ZSET exists only then, so only then is its TTL refreshed
-- ARGV[7] now             unix time, seconds (float string)
-- ARGV[8] n               number of messages
-- ARGV[9] n_system        how many of them are system messages (context() finds them by count)
-- ARGV[10] tokens         token count of the n messages together (each body carries its own "t")
-- ARGV[11 .. 10+n]        bodies: JSON objects without "s" (seq), each starting with '{'
--
-- ARGV[1..6] depend only on the resource, so the client packs them once with the keys.
--
-- Returns one string "first_seq,last_seq,message_count,token_count,flush,epoch,created" (a
-- flat string: redis-py decodes it several microseconds faster than an array of integers), where
-- flush is 0 below the threshold, 1 when this append set the flush marker (the caller enqueues a
-- flush), 2 at or over the threshold with a flush already pending (a deduplicated trigger), and
-- created is 1 when this append created the memory's metadata (a new memory: the caller makes
-- sure it is in the global indexes).
--
-- Cost (server time is on every append's critical path; bench/profile_append.py reports it from
-- INFO commandstats): one HMGET and one HSET instead of an HINCRBY per counter, and no PEXPIRE of
-- a key that does not exist: the summary HASH holds a summary when meta's summary_tokens is
-- positive (commit.lua writes both in one script; clear and replace drop both), the used ZSET
-- exists only for resources that track use (ARGV[6]).

local ttl_ms = tonumber(ARGV[1])
local n = tonumber(ARGV[8])
local m = redis.call('HMGET', KEYS[2], 'seq', 'message_count', 'token_count', 'summary_tokens',
  'epoch', 'created_at')

local first = (tonumber(m[1]) or 0) + 1
local seq = first + n - 1
local batch = {}
for i = 1, n do
  -- splice seq in as the first field: '{"s":N,' .. rest of the body after '{'
  batch[#batch + 1] = '{"s":' .. (first + i - 1) .. ',' .. string.sub(ARGV[10 + i], 2)
  if #batch == 512 then
    redis.call('RPUSH', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('RPUSH', KEYS[1], unpack(batch))
end

-- Counters as integers (string.format): a Lua number would reach Redis as "%.17g".
local count = (tonumber(m[2]) or 0) + n
local total = (tonumber(m[3]) or 0) + tonumber(ARGV[10])
local epoch = tonumber(m[5]) or 0
local created = 0
local fields = {'seq', string.format('%d', seq), 'message_count', string.format('%d', count),
  'token_count', string.format('%d', total), 'updated_at', ARGV[7], 'ttl_ms', ARGV[1]}
if not m[6] then
  -- no created_at: a new memory (or metadata lost): start its incarnation
  created = 1
  epoch = 0
  fields[#fields + 1] = 'created_at'
  fields[#fields + 1] = ARGV[7]
  fields[#fields + 1] = 'resource_id'
  fields[#fields + 1] = ARGV[2]
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = '0'
end
redis.call('HSET', KEYS[2], unpack(fields))
if ARGV[9] ~= '0' then redis.call('HINCRBY', KEYS[2], 'system_count', ARGV[9]) end

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
  if redis.call('SET', KEYS[5], ARGV[7], 'NX', 'PX', ARGV[5]) then
    requested = 1
  else
    requested = 2
  end
end

return string.format('%d,%d,%d,%d,%d,%d,%d', first, seq, count, total, requested, epoch, created)
