-- Release an execution's own lease (and drop it from the waiting list), then name the waiters
-- that may now be admitted and have no message on its way (each is published once, not once
-- per release: duplicates would multiply).
-- KEYS[1] slots    ZSET  execution_id -> lease expiry ms
-- KEYS[2] caps     HASH  execution_id -> hard lease cap ms
-- KEYS[3] waiting  ZSET  execution_id -> submission time (us)
-- KEYS[4] notified ZSET  execution_id -> ms when a message for it was last sent
-- ARGV[1] execution_id ('' to release nothing)   ARGV[2] max_parallel
-- ARGV[3] ms after which a notified head counts as lost and is named again
-- ARGV[4] lease_ms, ARGV[5] cap_ms (optional): lease the first of those heads here
--   (the releasing thread runs it next itself: it needs no message and no acquire)
-- Returns the execution ids to publish, the granted head first when ARGV[4] was given.
-- (`now`, `purge_lapsed` and `lease` come from prelude.lua, prepended when the script is
-- loaded.)
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
purge_lapsed(KEYS[1], KEYS[2])
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then return {} end
local heads = redis.call('ZRANGE', KEYS[3], 0, free - 1)
local send = {}
local grant = ARGV[4] ~= nil
for _, id in ipairs(heads) do
  local sent = redis.call('ZSCORE', KEYS[4], id)
  if not sent or tonumber(sent) <= now - tonumber(ARGV[3]) then
    if grant then  -- leased as acquire would; it leaves the list, needing no message
      lease(KEYS[1], KEYS[2], id, ARGV[4], ARGV[5])
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      grant = false
    else
      redis.call('ZADD', KEYS[4], now, id)
    end
    table.insert(send, id)
  end
end
return send
