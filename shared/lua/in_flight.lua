-- An agent's executions in flight as Redis knows them: its leases (lapsed ones too, until
-- purged) plus its waiters; -1 while Redis has lost its state (no epoch: a rebuild is due).
-- KEYS[1] slots  ZSET   KEYS[2] waiting  ZSET   KEYS[3] epoch  STRING
-- (No prelude: a read only, it needs neither the clock nor the purge.)
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
