-- append.lua: append N messages to one memory atomically (all or none).
--
-- KEYS[1] msgs     LIST   JSON messages
-- KEYS[2] meta     HASH   counters (message_count, token_count, seq, epoch, ...)
-- KEYS[3] summary  HASH   running summary (only its TTL is touched here)
-- KEYS[4] used     ZSET   LRU use times (only its TTL is touched here)
-- KEYS[5] flush    STRING flush marker
--
-- ARGV[1] ttl_ms          sliding TTL for every key of the memory; 0 = no expiry
-- ARGV[2] now             unix time, seconds (float string)
-- ARGV[3] resource_id
-- ARGV[4] token_threshold flush when token_count >= this; 0 = not tracked
-- ARGV[5] msg_threshold   flush when message_count >= this; 0 = not tracked
-- ARGV[6] marker_ttl_ms   TTL of the flush marker (bounds a lost task)
-- ARGV[7] n               number of messages
-- ARGV[8] n_system        how many of them are system messages (context() finds them by count)
-- ARGV[9 .. 8+2n]         pairs: body (JSON object without "s" (seq), starts with '{'), token_count
--
-- Returns {first_seq, last_seq, message_count, token_count, flush, epoch} where flush is
-- 0 below the threshold, 1 when this append set the flush marker (the caller enqueues a flush),
-- 2 at or over the threshold with a flush already pending (a deduplicated trigger)

local ttl_ms = tonumber(ARGV[1])
local n = tonumber(ARGV[7])

local seq = redis.call('HINCRBY', KEYS[2], 'seq', n)
local first = seq - n + 1
local tokens = 0
local batch = {}
for i = 1, n do
  local body = ARGV[7 + 2 * i]
  tokens = tokens + tonumber(ARGV[8 + 2 * i])
  -- splice seq in as the first field: '{"s":N,' .. rest of the body after '{'
  batch[#batch + 1] = '{"s":' .. (first + i - 1) .. ',' .. string.sub(body, 2)
  if #batch == 512 then
    redis.call('RPUSH', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('RPUSH', KEYS[1], unpack(batch))
end

local count = redis.call('HINCRBY', KEYS[2], 'message_count', n)
local total = redis.call('HINCRBY', KEYS[2], 'token_count', tokens)
if ARGV[8] ~= '0' then redis.call('HINCRBY', KEYS[2], 'system_count', ARGV[8]) end
if redis.call('HSETNX', KEYS[2], 'created_at', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], 'resource_id', ARGV[3], 'epoch', 0)
end
redis.call('HSET', KEYS[2], 'updated_at', ARGV[2], 'ttl_ms', ttl_ms)
local epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch')) or 0

if ttl_ms > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  redis.call('PEXPIRE', KEYS[3], ttl_ms)
  redis.call('PEXPIRE', KEYS[4], ttl_ms)
end

-- the summary is part of what a memory costs in a prompt, so it counts toward the threshold
local summary_tokens = tonumber(redis.call('HGET', KEYS[2], 'summary_tokens')) or 0
local requested = 0
local tok_thr = tonumber(ARGV[4])
local msg_thr = tonumber(ARGV[5])
if (tok_thr > 0 and total + summary_tokens >= tok_thr) or (msg_thr > 0 and count >= msg_thr) then
  if redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[6]) then
    requested = 1
  else
    requested = 2
  end
end

return {first, seq, count, total, requested, epoch}
