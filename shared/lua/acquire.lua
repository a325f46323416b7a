-- Admit an execution to one of its agent's slots, or park it in the FIFO waiting list.
-- KEYS[1] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[2] caps     HASH  execution_id -> hard lease cap ms
-- KEYS[3] waiting  ZSET  execution_id -> submission time (us): FIFO order
-- KEYS[4] agents   SET   agent names known to the reaper
-- KEYS[5] epoch    STRING present once Redis state was rebuilt from PostgreSQL
-- KEYS[6] notified ZSET  execution_id -> ms when a message for it was last sent
-- ARGV[1] execution_id   ARGV[2] agent name   ARGV[3] max_parallel
-- ARGV[4] lease_ms       ARGV[5] cap_ms (lease lifetime cap from now)
-- ARGV[6] submission time (us), the execution's place in the FIFO
-- Returns {1, 0} admitted (or already held), {0, position} parked (1-based),
-- {-1, 0} Redis lost its data: rebuild from PostgreSQL first (nothing was written).
-- (`now`, `purge_lapsed` and `lease` come from prelude.lua, prepended when the script is
-- loaded.)
local id = ARGV[1]
if redis.call('EXISTS', KEYS[5]) == 0 then return {-1, 0} end
redis.call('SADD', KEYS[4], ARGV[2])

-- Lapsed leases free their slots before anyone is counted.
purge_lapsed(KEYS[1], KEYS[2])

if redis.call('ZSCORE', KEYS[1], id) then return {1, 0} end

-- This message arrived: a later release may notify this execution again.
redis.call('ZREM', KEYS[6], id)
-- Everyone submitted earlier waits in the list already (the producer put them there).
redis.call('ZADD', KEYS[3], 'NX', ARGV[6], id)
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[3], id)
if free > 0 and rank < free then
  lease(KEYS[1], KEYS[2], id, ARGV[4], ARGV[5])
  redis.call('ZREM', KEYS[3], id)
  return {1, 0}
end
return {0, rank + 1}
