-- Release an execution's own lease (and drop it from the waiting list), then name the waiters
-- that may now be admitted.
-- KEYS[1] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[2] caps     HASH  execution_id -> hard lease cap ms
-- KEYS[3] waiting  ZSET  execution_id -> arrival sequence
-- ARGV[1] execution_id ('' to release nothing)   ARGV[2] max_parallel
-- Returns the execution ids at the head of the waiting list that fit in the free slots.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, member in ipairs(lapsed) do redis.call('HDEL', KEYS[2], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then return {} end
return redis.call('ZRANGE', KEYS[3], 0, free - 1)
