-- clear.lua: remove every message of a memory but keep its metadata (seq keeps counting, the
-- epoch moves so an in-flight flush cannot commit, and the cleared messages are counted).
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH
-- KEYS[3] summary  HASH
-- KEYS[4] used     ZSET
-- KEYS[5] archive  LIST   removed messages (only when ARGV[2] is not '')
--
-- ARGV[1] now
-- ARGV[2] archive  '' = off; 'ttl_ms:max': the cleared messages are pushed to KEYS[5] with
--                  '"why":"cleared","at":<now>' (as commit.lua does)
--
-- Returns {cleared, epoch}; {0, -1} when the memory does not exist (or was erased)

if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
  return {0, -1}
end
if redis.call('HEXISTS', KEYS[2], 'erased') == 1 then
  return {0, -1}  -- an erasure tombstone (erase.lua): nothing to clear
end
local old = tonumber(redis.call('HGET', KEYS[2], 'message_count')) or 0
if ARGV[2] ~= '' then
  local items = redis.call('LRANGE', KEYS[1], 0, -1)
  if #items > 0 then
    local ttl, cap = string.match(ARGV[2], '^(%d+):(%d+)$')
    local tail = ',"why":"cleared","at":' .. ARGV[1] .. '}'
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
redis.call('HSET', KEYS[2], 'message_count', 0, 'token_count', 0, 'updated_at', ARGV[1],
  'system_count', 0,
  'summary_tokens', 0)
redis.call('HINCRBY', KEYS[2], 'cleared', old)
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
return {old, epoch}
