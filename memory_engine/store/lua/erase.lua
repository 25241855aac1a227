-- erase.lua: erase one memory of a data subject (MemoryClient.erase_subject) and leave a tombstone.
--
-- KEYS[1] msgs     LIST
-- KEYS[2] meta     HASH   replaced by the tombstone {erased=1, erased_at}
-- KEYS[3] summary  HASH
-- KEYS[4] used     ZSET
-- KEYS[5] flush    STRING
-- KEYS[6] lock     STRING
-- KEYS[7] archive  LIST
--
-- ARGV[1] now            unix time, seconds
-- ARGV[2] tombstone_ms   life of the tombstone (MEMORY_ERASURE_TOMBSTONE_TTL_S)
--
-- The tombstone is written whether or not the memory exists: an append whose subject-index
-- write reached Redis before the erasure read the index, but whose script had not run yet, is
-- refused by it (append.lua, replace.lua answer 'E' / {-1}). It holds no content and no resource.
--
-- Returns the number of keys that existed and were deleted (a previous tombstone not counted).

local had_tombstone = redis.call('HEXISTS', KEYS[2], 'erased')
local deleted = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('HSET', KEYS[2], 'erased', '1', 'erased_at', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return deleted - had_tombstone
