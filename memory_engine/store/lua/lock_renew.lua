-- lock_renew.lua: extend the lock's TTL only if we still own it (compare-and-pexpire).
--
-- KEYS[1] lock  STRING owner token
-- ARGV[1] token
-- ARGV[2] ttl_ms
--
-- Returns 1 if renewed, 0 if the lock was lost
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
