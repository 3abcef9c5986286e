#pragma once
// The Lua script that owns a Redis limit set's state (see tollgate/redis.hpp).
//
// One hash per set. Every instant is an integer number of nanoseconds since
// the hash's own epoch `e` (whole seconds of server time), so that it stays
// exact in a Lua double (below 2^53); the epoch moves forward when "now"
// passes 2^52 ns (52 days).
//
//   e       epoch, server seconds
//   f       latest grant instant (no grant happens before it: FIFO)
//   p       paused until (an upstream 429)
//   t1..tn  paid-up-to instant of each dimension (GCRA's TAT)
//
// The client turns costs into refill times (ns, rounded up) and sends the
// refill time of a full dimension (tau), so the script is integer arithmetic
// only. By default a missing hash is a full set, and the hash expires when
// the set would be full again, so idle keys cost nothing. (With an explicit
// "now", for tests and replays, expiry still runs on the server's clock: such
// keys live at least 10 minutes, so they cannot vanish between two calls of a
// test.) With the flag "E" a missing hash is an empty set (state lost by a
// FLUSHALL, a restart without persistence or a failover reads as "nothing
// left", never as a fresh burst), and the hash never expires.
//
// KEYS[1] the hash. ARGV[1] the operation; ARGV[2], ARGV[3] "now" as seconds
// and nanoseconds, or "" to use the server's TIME; ARGV[4] n; ARGV[5..4+n]
// tau per dimension; ARGV[5+n] flags; then the operation's arguments. Replies
// are arrays of integers: {code, wait_ns, dimension (0-based, -1 for none),
// e, instant, ...}.

namespace tollgate::redis::detail {

inline constexpr const char* limit_set_script = R"lua(
local key, op = KEYS[1], ARGV[1]
local sec, nsec
if ARGV[2] == '' then
  local t = redis.call('TIME')
  sec, nsec = tonumber(t[1]), tonumber(t[2]) * 1000
else
  sec, nsec = tonumber(ARGV[2]), tonumber(ARGV[3])
end
local n = tonumber(ARGV[4])
local tau, names = {}, {'e', 'f', 'p'}
for d = 1, n do
  tau[d] = tonumber(ARGV[4 + d])
  names[3 + d] = 't' .. d
end
local missing_empty = ARGV[5 + n] == 'E'
local a = 6 + n
local s = redis.call('HMGET', key, unpack(names))
local e = tonumber(s[1])
local missing = e == nil
if missing then e = sec - 1 end
local now = (sec - e) * 1000000000 + nsec
local shift = 0
if now > 4503599627370496 then
  shift = (sec - 1 - e) * 1000000000
  e = sec - 1
  now = now - shift
end
local function stored(v, default)
  if v == false or v == nil then return default end
  return tonumber(v) - shift
end
local f = stored(s[2], now)
local p = stored(s[3], now)
local t = {}
for d = 1, n do
  if missing and missing_empty then t[d] = now else t[d] = stored(s[3 + d], now - tau[d]) end
  if t[d] < now - tau[d] then t[d] = now - tau[d] end
end
local function args(i)
  local v = {}
  for d = 1, n do v[d] = tonumber(ARGV[i + d - 1]) end
  return v
end
local function write()
  local kv = {'e', e, 'f', f, 'p', p}
  for d = 1, n do
    kv[#kv + 1] = 't' .. d
    kv[#kv + 1] = t[d]
  end
  redis.call('HSET', key, unpack(kv))
end
local function save()
  if missing_empty then  -- kept for good: a missing key would read as empty
    write()
    redis.call('PERSIST', key)
    return
  end
  local ttl = 0
  if f - now > ttl then ttl = f - now end
  if p - now > ttl then ttl = p - now end
  for d = 1, n do
    if t[d] + tau[d] - now > ttl then ttl = t[d] + tau[d] - now end
  end
  if ttl <= 0 then
    redis.call('DEL', key)
    return
  end
  write()
  local ms = math.ceil(ttl / 1000000)
  if ARGV[2] ~= '' and ms < 600000 then ms = 600000 end
  redis.call('PEXPIRE', key, ms)
end
local function grant_instant(iv)
  local g, dim = now, -1
  if f > g then g = f end
  if p > g then g = p end
  for d = 1, n do
    if t[d] + iv[d] > g then
      g = t[d] + iv[d]
      dim = d - 1
    end
  end
  return g, dim
end
local function give_back(iv)
  local credited = {}
  for d = 1, n do credited[d] = 0 end
  if f > now then return credited end
  for d = 1, n do
    local nt = t[d] - iv[d]
    if nt < now - tau[d] then nt = now - tau[d] end
    if nt < t[d] then
      credited[d] = t[d] - nt
      t[d] = nt
    end
  end
  return credited
end

if op == 'take' then
  local iv = args(a)
  local g, dim = grant_instant(iv)
  if g > now then return {1, g - now, dim, e, now} end
  for d = 1, n do t[d] = t[d] + iv[d] end
  f = now
  save()
  return {0, 0, -1, e, now}
elseif op == 'reserve' then
  local iv = args(a)
  local max_wait = tonumber(ARGV[a + n])
  local g, dim = grant_instant(iv)
  if g - now > max_wait then return {1, g - now, dim, e, now} end
  local r = {0, g - now, -1, e, g, f}
  for d = 1, n do
    r[6 + d] = t[d]
    if t[d] < g - tau[d] then t[d] = g - tau[d] end
    t[d] = t[d] + iv[d]
    r[6 + n + d] = t[d]
  end
  f = g
  save()
  return r
elseif op == 'cancel' then
  local back = (e - tonumber(ARGV[a])) * 1000000000
  local g = tonumber(ARGV[a + 1]) - back
  if g <= now then return {2, 0, -1, e, now} end
  local old, new = args(a + 3), args(a + 3 + n)
  if f ~= g then return {1, 0, -1, e, now} end
  for d = 1, n do
    if t[d] ~= new[d] - back then return {1, 0, -1, e, now} end
  end
  f = tonumber(ARGV[a + 2]) - back
  for d = 1, n do
    t[d] = old[d] - back
    if t[d] < now - tau[d] then t[d] = now - tau[d] end
  end
  save()
  return {0, 0, -1, e, now}
elseif op == 'refund' then
  local credited = give_back(args(a))
  save()
  local r = {0, 0, -1, e, now}
  for d = 1, n do r[5 + d] = credited[d] end
  return r
elseif op == 'charge' then
  local iv, most = args(a), args(a + n)
  local nt = {}
  for d = 1, n do
    nt[d] = t[d] + iv[d]
    if nt[d] > now + most[d] then nt[d] = now + most[d] end  -- at most max_debt of debt
    if nt[d] < t[d] then nt[d] = t[d] end
    if nt[d] - now > 4503599627370496 then return {1, 0, d - 1, e, now} end
  end
  for d = 1, n do t[d] = nt[d] end
  save()
  return {0, 0, -1, e, now}
elseif op == 'pause' then
  local until_ = now + tonumber(ARGV[a])
  if until_ > p then p = until_ end
  save()
  return {0, p - now, -1, e, now}
elseif op == 'remaining' then
  local d = tonumber(ARGV[a]) + 1
  local floor = now - tonumber(ARGV[a + 1])
  if t[d] < floor then t[d] = floor end
  save()
  return {0, 0, -1, e, now}
elseif op == 'lease' then
  give_back(args(a))
  local want, need = args(a + n), args(a + 2 * n)
  local g, dim = grant_instant(need)
  if g > now then
    save()
    return {1, g - now, dim, e, now}
  end
  local r = {0, 0, -1, e, now}
  for d = 1, n do
    local take = now - t[d]
    if take > want[d] then take = want[d] end
    if take < need[d] then take = need[d] end
    t[d] = t[d] + take
    r[5 + d] = take
  end
  f = now
  save()
  return r
elseif op == 'peek' then
  local r = {0, 0, -1, e, now}
  for d = 1, n do
    local v = now - t[d]
    if f > now or p > now or v < 0 then v = 0 end
    r[5 + d] = v
  end
  return r
end
return redis.error_reply('tollgate: unknown operation ' .. tostring(op))
)lua";

}  // namespace tollgate::redis::detail
