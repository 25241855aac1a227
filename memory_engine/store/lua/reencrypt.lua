-- reencrypt.lua: swap re-encrypted elements (and the summary text) into a memory, each only if
-- it is still exactly what the re-encryption read (key rotation, docs/encryption.md).
--
-- KEYS[1] msgs     LIST
-- KEYS[2] summary  HASH
--
-- ARGV[1]  n: how many elements follow
-- ARGV[2 .. 1+3n]  triples: list position (0-based), the element as read, its new form
-- ARGV[2+3n]  the summary text as read ('' = leave the summary alone)
-- ARGV[3+3n]  its new form
--
-- The compare-and-swap is per element, on its bytes: appends only add at the tail and leave
-- every position read untouched; a flush commit, clear or replace (epoch bumped) or the append's
-- ceiling (head elements evicted) moves or removes elements, and an element that is not where
-- it was, byte for byte, is left alone and counted as missed (the caller reads the memory again).
-- An element equal byte for byte to what was read holds the same seq, tokens and plaintext, so
-- its new form is the same message under another key: nothing is lost or resurrected. LSET
-- keeps the list's TTL.
--
-- Returns {swapped, missed}

local n = tonumber(ARGV[1])
local swapped, missed = 0, 0
for i = 0, n - 1 do
  local at = 2 + 3 * i
  local pos = tonumber(ARGV[at])
  if redis.call('LINDEX', KEYS[1], pos) == ARGV[at + 1] then
    redis.call('LSET', KEYS[1], pos, ARGV[at + 2])
    swapped = swapped + 1
  else
    missed = missed + 1
  end
end
local old_summary = ARGV[2 + 3 * n]
if old_summary ~= '' then
  if redis.call('HGET', KEYS[2], 'text') == old_summary then
    redis.call('HSET', KEYS[2], 'text', ARGV[3 + 3 * n])
    swapped = swapped + 1
  else
    missed = missed + 1
  end
end
return {swapped, missed}
