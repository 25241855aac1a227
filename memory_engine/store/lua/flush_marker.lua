-- flush_marker.lua: set a memory's flush marker, only if the memory exists.
--
-- KEYS[1] meta     HASH   the memory's metadata (its existence is the memory's)
-- KEYS[2] flush    STRING flush marker
--
-- ARGV[1] now            unix time, seconds (the marker's value)
-- ARGV[2] marker_ttl_ms  TTL of the marker (bounds a lost task)
--
-- Returns 1 when this call set the marker, 0 when a flush was already pending, -1 when the
-- memory does not exist (nothing written: a deleted memory must leave no marker behind).

if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'erased') == 1 then
  return -1
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
