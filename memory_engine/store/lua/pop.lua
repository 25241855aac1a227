-- pop.lua: remove and return the newest message of a memory (an undo of the last append, for
-- session protocols such as the OpenAI Agents SDK's pop_item). Counted like a clear of one
-- message: `cleared` grows by one, so seq == message_count + flushed + summarized + evicted +
-- cleared + replaced still holds, and the epoch moves so an in-flight flush whose snapshot held
-- the message cannot commit a summary of it.
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH
-- KEYS[3] used     ZSET   LRU use times (the popped seq leaves it)
--
-- ARGV[1] now
--
-- Returns the popped element (the stored JSON), or false when the memory is empty or does not
-- exist (nothing written).

if redis.call('EXISTS', KEYS[2]) == 0 then
  return false
end
local raw = redis.call('RPOP', KEYS[1])
if not raw then
  return false
end
-- The element's seq, token count and role are its first fields (memory_engine/messages.py).
local seq, tokens, role = string.match(raw, '^{"s":(%d+),"t":(%d+),"r":"(%a+)"')
redis.call('HINCRBY', KEYS[2], 'message_count', -1)
redis.call('HINCRBY', KEYS[2], 'token_count', -(tonumber(tokens) or 0))
if role == 'system' then
  redis.call('HINCRBY', KEYS[2], 'system_count', -1)
end
redis.call('HINCRBY', KEYS[2], 'cleared', 1)
redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'updated_at', ARGV[1])
if seq then
  redis.call('ZREM', KEYS[3], seq)
end
return raw
