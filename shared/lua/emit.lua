-- Append a batch of events to an execution's stream and publish them live in one message.
-- KEYS[1] stream   STREAM entry id "0-<event id>", field "e" = event JSON
-- KEYS[2] channel  pub/sub channel name (not a key; listed for clarity)
-- ARGV[1] max stream length (approximate trim)   ARGV[2] expire seconds (0 = none)
-- ARGV[3] id of the first event; the batch's ids are dense: ARGV[4..] are the events' JSON
local first = tonumber(ARGV[3])
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. (first + i - 4), 'e', ARGV[i])
end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', KEYS[2], '[' .. table.concat(ARGV, ',', 4) .. ']')
return #ARGV - 3
