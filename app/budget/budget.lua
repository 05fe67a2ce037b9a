-- Per-org budget reservations, atomically, for Redis (and Redis Cluster: every key has the org's
-- hash tag, e.g. ivy:budget:{o:acme}:...). Amounts are integers: nano-USD or tokens.
-- Each period's hash holds spent, reserved, soft (the 80% warning was given), ex (exhaustion said);
-- its zset holds the live reservations, "id:amount" scored by their expiry (ms, server clock), so
-- a worker that died mid-call gives its reservation back when it expires.
--
-- op "reserve": KEYS = limit hash, day hash, day holds, month hash, month holds.
--   ARGV = op, default amount (-1: no default), default unit, default period, worst case in nano-USD
--   (-1: price unknown), worst case in tokens, hold id, hold ttl ms, period key ttl s.
--   Returns {verdict (0 refused, 1 reserved, 2 no budget, 3 not counted: price unknown),
--            spent, reserved, limit, unit, period, first refusal of the period (1/0), amount}.
-- op "settle": KEYS = period hash, its holds.
--   ARGV = op, member, reserved amount, actual amount, limit, soft threshold (per mille), key ttl s.
--   Returns {spent, reserved, soft threshold crossed by this call (1/0)}.
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function sweep(hash, holds)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #expired == 0 then return end
  local back = 0
  for _, member in ipairs(expired) do
    back = back + tonumber(string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  redis.call('HINCRBY', hash, 'reserved', -back)
end

if op == 'reserve' then
  local o = redis.call('HMGET', KEYS[1], 'amount', 'unit', 'period')
  local limit, unit, period = tonumber(o[1]), o[2], o[3]
  if limit == nil then
    limit, unit, period = tonumber(ARGV[2]), ARGV[3], ARGV[4]
    if limit < 0 then return {2, 0, 0, 0, '', '', 0, 0} end
  end
  local amount = tonumber(ARGV[6])
  if unit == 'usd' then amount = tonumber(ARGV[5]) end
  if amount < 0 then return {3, 0, 0, limit, unit, period, 0, 0} end
  local hash, holds = KEYS[2], KEYS[3]
  if period == 'month' then hash, holds = KEYS[4], KEYS[5] end
  sweep(hash, holds)
  local v = redis.call('HMGET', hash, 'spent', 'reserved', 'ex')
  local spent, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  local ttl = tonumber(ARGV[9])
  if spent + reserved + amount > limit then
    local first = 0
    if not v[3] then
      redis.call('HSET', hash, 'ex', '1')
      redis.call('EXPIRE', hash, ttl)
      first = 1
    end
    return {0, spent, reserved, limit, unit, period, first, amount}
  end
  redis.call('HINCRBY', hash, 'reserved', amount)
  redis.call('ZADD', holds, now + tonumber(ARGV[8]), ARGV[7] .. ':' .. amount)
  redis.call('EXPIRE', hash, ttl)
  redis.call('EXPIRE', holds, ttl)
  return {1, spent, reserved + amount, limit, unit, period, 0, amount}
end

-- settle
local hash, holds = KEYS[1], KEYS[2]
local reserved_amount, actual, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if reserved_amount > 0 and redis.call('ZREM', holds, ARGV[2]) == 1 then
  redis.call('HINCRBY', hash, 'reserved', -reserved_amount)
end
local spent = redis.call('HINCRBY', hash, 'spent', actual)
local crossed = 0
if limit > 0 and spent * 1000 >= limit * tonumber(ARGV[6]) and redis.call('HSETNX', hash, 'soft', '1') == 1 then
  crossed = 1
end
redis.call('EXPIRE', hash, tonumber(ARGV[7]))
return {spent, tonumber(redis.call('HGET', hash, 'reserved') or '0'), crossed}
