-- Renew an execution's lease, never past its hard cap; restore a lease that vanished (Redis
-- restarted, or lapsed while nobody took the slot) only when a slot is free.
-- KEYS[1] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[2] caps     HASH  execution_id -> hard lease cap ms
-- ARGV[1] execution_id   ARGV[2] lease_ms   ARGV[3] max_parallel
-- ARGV[4] remaining cap ms (the holder's own count of timeout + buffer left)
-- Returns 1 renewed, 2 restored, 0 gone for good (stop work).
-- (`now` and `purge_lapsed` come from prelude.lua, prepended when the script is loaded.)
local id = ARGV[1]
purge_lapsed(KEYS[1], KEYS[2])

local cap = tonumber(redis.call('HGET', KEYS[2], id) or (now + tonumber(ARGV[4])))
local expiry = math.min(now + tonumber(ARGV[2]), cap)
if expiry <= now then
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  return 0
end
if redis.call('ZSCORE', KEYS[1], id) then
  redis.call('ZADD', KEYS[1], 'XX', expiry, id)
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], expiry, id)
  redis.call('HSET', KEYS[2], id, cap)
  return 2
end
return 0
