-- Put a just-submitted execution in its agent's FIFO waiting list, ordered by submission time,
-- and say whether it fits in a free slot now (then the caller publishes it, and it is marked
-- notified so a concurrent release does not publish it a second time).
-- KEYS[1] waiting  ZSET  execution_id -> submission time (us)
-- KEYS[2] agents   SET   agent names known to the reaper
-- KEYS[3] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[4] notified ZSET  execution_id -> ms when a message for it was last sent
-- ARGV[1] execution_id   ARGV[2] submission time (us)   ARGV[3] agent name
-- ARGV[4] max_parallel
-- Returns {place in the queue beyond the free slots (<= 0: it fits), 1 if it fits now else 0}.
-- (`now` and `purge_lapsed` come from prelude.lua, prepended when the script is loaded.)
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
local free = tonumber(ARGV[4]) - redis.call('ZCOUNT', KEYS[3], now, '+inf')
if rank < free then
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  return {rank + 1 - free, 1}
end
return {rank + 1 - math.max(free, 0), 0}
