-- record_use.lua: LRU bookkeeping, only if the memory exists.
--
-- KEYS[1] meta     HASH   the memory's metadata (its existence is the memory's)
-- KEYS[2] used     ZSET   seq -> last use time
--
-- ARGV[1] now      unix time, seconds (the score)
-- ARGV[2] ttl_s    TTL of the use set; 0 = none
-- ARGV[3 ..]       seqs used
--
-- A read that returns after a delete() must not leave a use set that a memory created later
-- under the same key would inherit. Returns how many seqs were recorded (0: memory missing).

if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'erased') == 1 then
  return 0
end
local n = #ARGV - 2
for i = 3, #ARGV, 512 do
  local args = {}
  for j = i, math.min(i + 511, #ARGV) do
    args[#args + 1] = ARGV[1]
    args[#args + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[2], unpack(args))
end
if ARGV[2] ~= '0' then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return n
