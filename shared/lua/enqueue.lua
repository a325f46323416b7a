-- Put just-submitted executions in their agent's FIFO waiting list, ordered by submission
-- time, and say for each whether it fits in a free slot now (then the caller publishes it, and
-- it is marked notified so a concurrent release does not publish it a second time).
-- KEYS[1] waiting  ZSET  execution_id -> submission time (us)
-- KEYS[2] agents   SET   agent names known to the reaper
-- KEYS[3] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[4] notified ZSET  execution_id -> ms when a message for it was last sent
-- ARGV[1] agent name   ARGV[2] max_parallel   then pairs: execution_id, submission time (us)
-- Returns, per pair in order: place in the queue beyond the free slots (<= 0: it fits), then
-- 1 if it fits now else 0.
-- (`now` and `purge_lapsed` come from prelude.lua, prepended when the script is loaded.)
redis.call('SADD', KEYS[2], ARGV[1])
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
end
local free = tonumber(ARGV[2]) - redis.call('ZCOUNT', KEYS[3], now, '+inf')
local answer = {}
for i = 3, #ARGV, 2 do
  local rank = redis.call('ZRANK', KEYS[1], ARGV[i])
  if rank < free then
    redis.call('ZADD', KEYS[4], now, ARGV[i])
    answer[#answer + 1] = rank + 1 - free
    answer[#answer + 1] = 1
  else
    answer[#answer + 1] = rank + 1 - math.max(free, 0)
    answer[#answer + 1] = 0
  end
end
return answer
