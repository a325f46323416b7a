-- Append a batch of events to an execution's stream and publish them live in one message.
-- KEYS[1] stream   STREAM entry id "0-<event id>", field "e" = event JSON
-- KEYS[2] channel  pub/sub channel name (not a key; listed for clarity)
-- ARGV[1] max stream length (approximate trim)   ARGV[2] expire seconds (0 = none)
-- ARGV[3] JSON array of the events (for PUBLISH)  ARGV[4..] pairs: event id, event JSON
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. ARGV[i], 'e', ARGV[i + 1])
end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', KEYS[2], ARGV[3])
return #ARGV
