-- replace.lua: replace every message of a memory atomically; keeps the TTL, bumps the epoch.
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH
-- KEYS[3] summary  HASH   dropped: it summarised the replaced conversation
-- KEYS[4] used     ZSET   dropped with the messages it described
-- KEYS[5] archive  LIST   replaced messages (only when ARGV[6] is not '')
--
-- ARGV[1] now
-- ARGV[2] resource_id
-- ARGV[3] ttl_ms   TTL for a memory that does not exist yet (an existing one keeps its TTL)
-- ARGV[4] n
-- ARGV[5] n_system
-- ARGV[6] archive  '' = off; 'ttl_ms:max': the replaced messages are pushed to KEYS[5] with
--                  '"why":"replaced","at":<now>' (as commit.lua does)
-- ARGV[7 .. 6+2n]  pairs: body (JSON without "s" (seq)), token_count
--
-- Returns {message_count, token_count, epoch, first_seq, last_seq}; {-1} when the memory holds
-- an erasure tombstone (erase.lua): nothing was written

local n = tonumber(ARGV[4])
if redis.call('HEXISTS', KEYS[2], 'erased') == 1 then
  return {-1}
end
local pttl = redis.call('PTTL', KEYS[2])
if pttl == -2 then
  pttl = tonumber(ARGV[3])
  if pttl == 0 then pttl = -1 end
end

local old = tonumber(redis.call('HGET', KEYS[2], 'message_count')) or 0
if ARGV[6] ~= '' then
  local items = redis.call('LRANGE', KEYS[1], 0, -1)
  if #items > 0 then
    local ttl, cap = string.match(ARGV[6], '^(%d+):(%d+)$')
    local tail = ',"why":"replaced","at":' .. ARGV[1] .. '}'
    for i = 1, #items, 512 do
      local part = {}
      for j = i, math.min(i + 511, #items) do part[#part + 1] = string.sub(items[j], 1, -2) .. tail end
      redis.call('RPUSH', KEYS[5], unpack(part))
    end
    redis.call('HINCRBY', KEYS[2], 'archived', #items)
    if tonumber(cap) > 0 then redis.call('LTRIM', KEYS[5], -tonumber(cap), -1) end
    if tonumber(ttl) > 0 then redis.call('PEXPIRE', KEYS[5], ttl) end
  end
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])

local seq = redis.call('HINCRBY', KEYS[2], 'seq', n)
local first = seq - n + 1
local tokens = 0
local batch = {}
for i = 1, n do
  tokens = tokens + tonumber(ARGV[6 + 2 * i])
  batch[#batch + 1] = '{"s":' .. (first + i - 1) .. ',' .. string.sub(ARGV[5 + 2 * i], 2)
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
