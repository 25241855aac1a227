-- replace.lua: replace every message of a memory atomically; keeps the TTL, bumps the epoch.
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH
-- KEYS[3] summary  HASH   dropped: it summarised the replaced conversation
-- KEYS[4] used     ZSET   dropped with the messages it described
--
-- ARGV[1] now
-- ARGV[2] resource_id
-- ARGV[3] ttl_ms   TTL for a memory that does not exist yet (an existing one keeps its TTL)
-- ARGV[4] n
-- ARGV[5] n_system
-- ARGV[6 .. 5+2n]  pairs: body (JSON without "s" (seq)), token_count
--
-- Returns {message_count, token_count, epoch, first_seq, last_seq}

local n = tonumber(ARGV[4])
local pttl = redis.call('PTTL', KEYS[2])
if pttl == -2 then
  pttl = tonumber(ARGV[3])
  if pttl == 0 then pttl = -1 end
end

local old = tonumber(redis.call('HGET', KEYS[2], 'message_count')) or 0
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])

local seq = redis.call('HINCRBY', KEYS[2], 'seq', n)
local first = seq - n + 1
local tokens = 0
local batch = {}
for i = 1, n do
  tokens = tokens + tonumber(ARGV[5 + 2 * i])
  batch[#batch + 1] = '{"s":' .. (first + i - 1) .. ',' .. string.sub(ARGV[4 + 2 * i], 2)
  if #batch == 512 then
    redis.call('RPUSH', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('RPUSH', KEYS[1], unpack(batch))
end

redis.call('HSETNX', KEYS[2], 'created_at', ARGV[1])
redis.call('HSETNX', KEYS[2], 'resource_id', ARGV[2])
redis.call('HSET', KEYS[2], 'message_count', n, 'token_count', tokens, 'updated_at', ARGV[1],
  'system_count', ARGV[5],
  'summary_tokens', 0)
redis.call('HINCRBY', KEYS[2], 'replaced', old)
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)

if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
  if n > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end
end

return {n, tokens, epoch, first, seq}
