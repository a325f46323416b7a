-- Renew an execution's lease, never past its hard cap.
-- KEYS[1] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[2] caps     HASH  execution_id -> hard lease cap ms
-- ARGV[1] execution_id   ARGV[2] lease_ms
-- Returns 1 when renewed, 0 when the lease is gone (lapsed, reaped or capped): stop work.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
local cap = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or score)
local expiry = math.min(now + tonumber(ARGV[2]), cap)
if expiry <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[1])
return 1
