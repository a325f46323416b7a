-- Prepended to every slot script by shared/slots.py (once, when the scripts are loaded).
-- Reads the time with Redis's own clock (every lease is measured by it, never a worker's) and
-- defines purge_lapsed: drop the leases whose expiry has passed, and their caps.
-- Defines: now (ms since the epoch, by Redis's TIME), purge_lapsed(slots_key, caps_key),
-- lease(slots_key, caps_key, id, lease_ms, cap_ms).
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function purge_lapsed(slots_key, caps_key)
  local lapsed = redis.call('ZRANGEBYSCORE', slots_key, '-inf', now)
  for _, member in ipairs(lapsed) do redis.call('HDEL', caps_key, member) end
  redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', now)
end

-- Give an execution a slot: its lease expires after lease_ms, never past its hard cap
-- (cap_ms from now), which renewals respect too.
local function lease(slots_key, caps_key, id, lease_ms, cap_ms)
  local cap = now + tonumber(cap_ms)
  redis.call('ZADD', slots_key, math.min(now + tonumber(lease_ms), cap), id)
  redis.call('HSET', caps_key, id, cap)
end
