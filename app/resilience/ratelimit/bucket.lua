-- The token-bucket rules of bucket.py, for Redis: one call decides a batch of checks, in order, atomically.
-- KEYS: for each check, its user bucket then (optionally) its org bucket, flattened.
-- ARGV[1..5]: user_rate, user_capacity, org_rate, org_capacity (tokens per second / tokens), burst window (s);
-- ARGV[6..]: one entry per check, how many KEYS it owns (1: user only, 2: user and org).
-- Each bucket is a hash: tk tokens, ts last update, fa last time it was full (server clock).
-- Returns 4 integers per check, flattened: allowed, refusing bucket (0 none, 1 user, 2 org, 3 burst),
-- user tokens*1000, org tokens*1000 (-1000 without an org).
-- One TIME per batch; each check re-reads its buckets (HMGET) after the previous check's HSET, so a
-- bucket that appears twice in a batch is decremented exactly as by two calls at the same instant.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function load(key, rate, cap)
  local v = redis.call('HMGET', key, 'tk', 'ts', 'fa')
  local tokens, ts, fa = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if tokens == nil or ts == nil then return cap, now end
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  if tokens >= cap or fa == nil then fa = now end
  return tokens, fa
end
local function store(key, tokens, fa, rate, cap)
  redis.call('HSET', key, 'tk', tostring(tokens), 'ts', tostring(now), 'fa', tostring(fa))
  redis.call('PEXPIRE', key, math.ceil((cap - tokens) / rate * 1000) + 1000)
end
local ur, uc = tonumber(ARGV[1]), tonumber(ARGV[2])
local orr, oc = tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local out = {}
local k = 1
for i = 6, #ARGV do
  local ukey = KEYS[k]
  local okey = nil
  if tonumber(ARGV[i]) > 1 then okey = KEYS[k + 1] end
  k = k + tonumber(ARGV[i])
  local user, ufa = load(ukey, ur, uc)
  local org, ofa = -1, now
  if okey then org, ofa = load(okey, orr, oc) end
  local refused = 0
  if user < 1 then
    if now - ufa < window then refused = 3 else refused = 1 end
  end
  if okey and org < 1 then
    if refused == 0 or (1 - org) / orr > (1 - user) / ur then refused = 2 end
  end
  if refused == 0 then
    user = user - 1
    store(ukey, user, ufa, ur, uc)
    if okey then
      org = org - 1
      store(okey, org, ofa, orr, oc)
    end
  end
  out[#out + 1] = refused == 0 and 1 or 0
  out[#out + 1] = refused
  out[#out + 1] = math.floor(user * 1000)
  out[#out + 1] = math.floor(org * 1000)
end
return out
