-- Put a just-submitted execution in its agent's FIFO waiting list, ordered by submission time.
-- KEYS[1] waiting  ZSET  execution_id -> submission time (us)
-- KEYS[2] agents   SET   agent names known to the reaper
-- ARGV[1] execution_id   ARGV[2] submission time (us)   ARGV[3] agent name
-- Returns the 1-based position in the list.
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
return redis.call('ZRANK', KEYS[1], ARGV[1]) + 1
