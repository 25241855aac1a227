-- clear.lua: remove every message of a memory but keep its metadata (seq keeps counting, the
-- epoch moves so an in-flight flush cannot commit, and the cleared messages are counted).
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH
-- KEYS[3] summary  HASH
-- KEYS[4] used     ZSET
--
-- ARGV[1] now
--
-- Returns {cleared, epoch}; {0, -1} when the memory does not exist

if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
  return {0, -1}
end
local old = tonumber(redis.call('HGET', KEYS[2], 'message_count')) or 0
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[2], 'message_count', 0, 'token_count', 0, 'updated_at', ARGV[1],
  'system_count', 0,
  'summary_tokens', 0)
redis.call('HINCRBY', KEYS[2], 'cleared', old)
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
return {old, epoch}
