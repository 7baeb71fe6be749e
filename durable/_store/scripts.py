"""Lua scripts run by the store. Flat KEYS/ARGV, no cmsgpack, no Redis Functions, so they run on
Redis 6.2+, Cluster, Valkey and fakeredis[lua]. Every writer validates first and writes after:
Redis has no rollback."""

# KEYS: lease, epoch ; ARGV: worker, uuid, ttl_ms  ->  lease value, or false when held
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local e = redis.call('INCR', KEYS[2])
local v = e .. '|' .. ARGV[1] .. '|' .. ARGV[2]
redis.call('SET', KEYS[1], v, 'PX', tonumber(ARGV[3]))
return v
"""

# KEYS: lease ; ARGV: value, ttl_ms  ->  1 renewed, 0 lost
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS: lease ; ARGV: value  ->  1 released, 0 not ours
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: lease, timers, timer_data, inbox ; ARGV: lease value, limit, now ('' = the Redis clock;
# only a test environment with its own clock passes a time)
# -> {promoted, next_due_ms or -1, now_ms}; {-1} when fenced. Uses the Redis clock.
PROMOTE_TIMERS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, -1, -1} end
local now
if ARGV[3] and ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local m = redis.call('HGET', KEYS[3], member)
  if m then redis.call('XADD', KEYS[4], '*', 'm', m) end
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local nd = -1
if nxt[2] then nd = tonumber(nxt[2]) end
return {#due, nd, now}
"""


# Query indexes (see PartitionKeys.query_prefix), shared by COMMIT, START and PURGE. The prefix is
# derived from the partition's instance index key ('...:index' -> '...:q:'), so the index keys
# share the partition's hash tag. An instance's entries follow its status, name, creation time
# and tags: qsync compares the hash's fields before and after a write and moves the entries.
_QLIB = """
local function qprefix(index_key) return string.sub(index_key, 1, #index_key - 5) .. 'q:' end
local function qnet(s) return #s .. ':' .. s end
local function qkeys(qp, st, name, tags)
  if not st then return {} end
  if st == 'CONTINUED_AS_NEW' then st = 'RUNNING' end
  name = name or ''
  local ks = {qp .. 'all', qp .. 's:' .. st, qp .. 'n:' .. name, qp .. 'ns:' .. st .. ':' .. name}
  local i = 1
  while tags and i <= #tags do
    local c = string.find(tags, ':', i, true)
    local n = tonumber(string.sub(tags, i, c - 1))
    local k = string.sub(tags, c + 1, c + n)
    i = c + n + 1
    c = string.find(tags, ':', i, true)
    n = tonumber(string.sub(tags, i, c - 1))
    local v = string.sub(tags, c + 1, c + n)
    i = c + n + 1
    local t = qnet(k) .. qnet(v)
    ks[#ks + 1] = qp .. 't:' .. t
    ks[#ks + 1] = qp .. 'ts:' .. st .. ':' .. t
  end
  return ks
end
local function qmember(created, iid)
  return string.format('%015d', tonumber(created) or 0) .. '|' .. iid
end
local QFIELDS = {'status', 'created', 'name', 'tags'}
local function qread(hk) return redis.call('HMGET', hk, unpack(QFIELDS)) end
local function qsync(qp, hk, iid, old)
  local new = qread(hk)
  if old[1] == new[1] and old[2] == new[2] and old[3] == new[3] and old[4] == new[4] then return end
  if old[1] then
    local m = qmember(old[2], iid)
    for _, k in ipairs(qkeys(qp, old[1], old[3], old[4])) do redis.call('ZREM', k, m) end
  end
  if new[1] then
    local m = qmember(new[2], iid)
    for _, k in ipairs(qkeys(qp, new[1], new[3], new[4])) do redis.call('ZADD', k, 0, m) end
  end
end
"""

# Add the query index entries of instances written before the indexes existed (durable reindex).
# KEYS: the partition's instance index ; ARGV: instance ids  ->  how many were looked at
REINDEX = (
    _QLIB
    + """
local QP = qprefix(KEYS[1])
local tag = string.sub(KEYS[1], 1, #KEYS[1] - 5)
local none = {false, false, false, false}
for i = 1, #ARGV do qsync(QP, tag .. 'i:' .. ARGV[i], ARGV[i], none) end
return #ARGV
"""
)

# The partition commit.
# KEYS: 1 lease, 2 state, 3 inbox, 4 outbox, 5 timers, 6 timer_data, 7 index, 8 entity index,
#       then per record i: 7+2i record hash, 8+2i history list (orchestrations) or the hash again.
# ARGV (read in order):
#   lease, prev_cursor, new_cursor, n, then n expected versions,
#   per record: mode ('a' append | 'r' replace history | 'd' delete record), nfields, k v ...,
#               nevents, events ..., index ('i' | 'e' | 'c' | ''), index member, index score ('' = keep),
#               query (an orchestration's instance id: its query index entries follow its fields; ''),
#               channel ('' = none), message,
#               nblobs, [blob set key index, then per blob: key index, data]   (large payloads)
#   nself, per message: nfields, k v ...      (XADD to this partition's inbox)
#   nout,  per message: dst, nfields, k v ... (dst '' = XADD to the outbox; a number n = XADD
#                                              straight to KEYS[n], used on standalone Redis)
#   ntimers, per timer: score, member, data
#   ndeltimers, member ...
#   nstate, k v ...                            (HSET state, e.g. src positions)
#   ndeleg, [key index, then k v ...]          (HSET the partition's delegated-instances hash)
#   nundeleg, [key index, then k ...]          (HDEL from it)
#   ndlq, [dlq key index, maxlen, then per entry: nfields, k v ...]   (dead letters)
#   nfin, [finished index key index, then per instance: member, score ('' = ZREM)]
#   trim ('1' to XTRIM the inbox up to new_cursor)
#   audit ('1': XADD lease, prev and new cursor to the last key, the partition's audit stream)
# Returns {1, outbox ids...} | {-1} fenced | {-2, cursor} cursor moved | {-3, i} version conflict
COMMIT = (
    _QLIB
    + """
local QP = qprefix(KEYS[7])
local pos = 1
local function nxt() local v = ARGV[pos]; pos = pos + 1; return v end
-- Lua's unpack() has a limit of about 8000 values: variadic calls go in chunks
local CHUNK = 4000
local function chunked(cmd, key, values)
  for s = 1, #values, CHUNK do
    redis.call(cmd, key, unpack(values, s, math.min(s + CHUNK - 1, #values)))
  end
end
local lease = nxt()
if redis.call('GET', KEYS[1]) ~= lease then return {-1} end
local prev = nxt(); local newc = nxt()
local cur = redis.call('HGET', KEYS[2], 'cursor') or '0-0'
if cur ~= prev then return {-2, cur} end
local n = tonumber(nxt())
local vers = {}
for i = 1, n do
  local expected = nxt()
  local v = redis.call('HGET', KEYS[7 + 2 * i], 'v') or '0'
  if v ~= expected then return {-3, i} end
  vers[i] = tonumber(expected)
end
for i = 1, n do
  local hk, lk = KEYS[7 + 2 * i], KEYS[8 + 2 * i]
  local mode = nxt()
  local nf = tonumber(nxt())
  local fields = {}
  for j = 1, nf * 2 do fields[j] = nxt() end
  local ne = tonumber(nxt())
  local qold = nil
  if ARGV[pos + ne + 3] ~= '' then qold = qread(hk) end  -- the query field, below
  if mode == 'd' then
    redis.call('DEL', hk)
    if lk ~= hk then redis.call('DEL', lk) end
    pos = pos + ne
  else
    if mode == 'r' and lk ~= hk then redis.call('DEL', lk) end
    if ne > 0 then
      local evs = {}
      for j = 1, ne do evs[j] = nxt() end
      chunked('RPUSH', lk, evs)
    end
    if nf > 0 then chunked('HSET', hk, fields) end
    redis.call('HSET', hk, 'v', vers[i] + 1)
  end
  local which = nxt(); local member = nxt(); local score = nxt()
  if which ~= '' then
    local idx = KEYS[7]
    if which == 'e' then idx = KEYS[8] elseif which == 'c' then idx = QP .. 'ctl' end
    if mode == 'd' then
      redis.call('ZREM', idx, member)
      if which == 'e' then redis.call('ZREM', QP .. 'e', member) end
    elseif score ~= '' then
      redis.call('ZADD', idx, tonumber(score), member)
      if which == 'e' then redis.call('ZADD', QP .. 'e', 0, member) end
    end
  end
  local qiid = nxt()
  if qiid ~= '' then qsync(QP, hk, qiid, qold) end
  local ch = nxt(); local msg = nxt()
  if ch ~= '' then redis.call('PUBLISH', ch, msg) end
  local nb = tonumber(nxt())
  if nb > 0 then
    local set = KEYS[tonumber(nxt())]
    for j = 1, nb do
      local bk = KEYS[tonumber(nxt())]; local data = nxt()
      redis.call('SET', bk, data)
      redis.call('SADD', set, bk)
    end
  end
end
local ns = tonumber(nxt())
for i = 1, ns do
  local nf = tonumber(nxt()); local f = {}
  for j = 1, nf * 2 do f[j] = nxt() end
  redis.call('XADD', KEYS[3], '*', unpack(f))
end
local out = {1}
local no = tonumber(nxt())
for i = 1, no do
  local dst = nxt()
  local nf = tonumber(nxt()); local f = {}
  for j = 1, nf * 2 do f[j] = nxt() end
  if dst == '' then
    out[#out + 1] = redis.call('XADD', KEYS[4], '*', unpack(f))
  else
    redis.call('XADD', KEYS[tonumber(dst)], '*', unpack(f))
  end
end
local nt = tonumber(nxt())
for i = 1, nt do
  local score = nxt(); local member = nxt(); local data = nxt()
  redis.call('ZADD', KEYS[5], tonumber(score), member)
  redis.call('HSET', KEYS[6], member, data)
end
local nd = tonumber(nxt())
for i = 1, nd do
  local member = nxt()
  redis.call('ZREM', KEYS[5], member)
  redis.call('HDEL', KEYS[6], member)
end
local nst = tonumber(nxt())
local st = {'cursor', newc}
for j = 1, nst * 2 do st[#st + 1] = nxt() end
chunked('HSET', KEYS[2], st)
local ndg = tonumber(nxt())
if ndg > 0 then
  local dk = KEYS[tonumber(nxt())]; local f = {}
  for j = 1, ndg * 2 do f[j] = nxt() end
  chunked('HSET', dk, f)
end
local nud = tonumber(nxt())
if nud > 0 then
  local dk = KEYS[tonumber(nxt())]; local f = {}
  for j = 1, nud do f[j] = nxt() end
  chunked('HDEL', dk, f)
end
local ndl = tonumber(nxt())
if ndl > 0 then
  local dlq = KEYS[tonumber(nxt())]; local maxlen = nxt()
  for i = 1, ndl do
    local nf = tonumber(nxt()); local f = {}
    for j = 1, nf * 2 do f[j] = nxt() end
    redis.call('XADD', dlq, 'MAXLEN', '~', maxlen, '*', unpack(f))
  end
end
local nfin = tonumber(nxt())
if nfin > 0 then
  local fin = KEYS[tonumber(nxt())]
  for i = 1, nfin do
    local member = nxt(); local score = nxt()
    if score == '' then redis.call('ZREM', fin, member)
    else redis.call('ZADD', fin, tonumber(score), member) end
  end
end
if nxt() == '1' then redis.call('XTRIM', KEYS[3], 'MINID', newc) end
if nxt() == '1' then  -- test builds: an audit trail of every accepted commit (last key)
  redis.call('XADD', KEYS[#KEYS], '*', 'lease', lease, 'prev', prev, 'new', newc)
end
return out
"""
)

# Client start. KEYS: instance hash, inbox, timers, timer_data, index
# ARGV: message, created_ms, name, input, scheduled_ms ('' = now), timer member, instance id, execution id,
#       timer wake-up message, tags ('' = none), pinned ('1': the version in the next argument; else
#       not pinned), version, replaceable ('' = the finished statuses; else '|S1|S2|...|'), replaces
#       (an execution id: that execution, once finished, is replaced whatever the statuses say)
# -> {1} started, {0, status} an instance exists that may not be replaced, {2, status, exec} an
#    unfinished instance may be replaced: the caller terminates it first (nothing was written)
START = (
    _QLIB
    + """
local qold = qread(KEYS[1])
local st = qold[1]
if st then
  local done = st == 'COMPLETED' or st == 'FAILED' or st == 'TERMINATED'
  local ok = done
  if ARGV[13] ~= '' then ok = string.find(ARGV[13], '|' .. st .. '|', 1, true) ~= nil end
  local exec = redis.call('HGET', KEYS[1], 'exec') or ''
  if done and ARGV[14] ~= '' and exec == ARGV[14] then ok = true end
  if not ok then return {0, st} end
  if not done then return {2, st, exec} end
end
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'name', ARGV[3], 'input', ARGV[4], 'created', ARGV[2],
           'updated', ARGV[2], 'exec', ARGV[8])
redis.call('HDEL', KEYS[1], 'output', 'failure', 'custom', 'scheduled', 'parent', 'pending', 'tags', 'ver',
           'wi', 'pk')
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'tags', ARGV[10]) end
if ARGV[11] == '1' then redis.call('HSET', KEYS[1], 'ver', ARGV[12]) end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'scheduled', ARGV[5])
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), ARGV[6])
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[1])
  -- tell the partition's owner about the new timer (it only tracks timers it wrote itself)
  redis.call('XADD', KEYS[2], '*', 'm', ARGV[9])
else
  redis.call('XADD', KEYS[2], '*', 'm', ARGV[1])
end
redis.call('ZADD', KEYS[5], tonumber(ARGV[2]), ARGV[7])
qsync(qprefix(KEYS[5]), KEYS[1], ARGV[7], qold)
return {1}
"""
)

# Client message to an existing instance. KEYS: instance hash, inbox ; ARGV: message -> 1 sent, 0 unknown
SEND_TO_INSTANCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'm', ARGV[1])
return 1
"""

# Client purge. KEYS: instance hash, history, index, blob set, finished index, then the blobs the
# caller read from the set ; ARGV: instance id, number of blobs  ->  1 purged, 0 not found,
# -1 not terminal, -2 the blob set changed (read it again)
PURGE = (
    _QLIB
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if st ~= 'COMPLETED' and st ~= 'FAILED' and st ~= 'TERMINATED' then return -1 end
if redis.call('SCARD', KEYS[4]) ~= tonumber(ARGV[2]) then return -2 end
for i = 6, #KEYS do
  if redis.call('SISMEMBER', KEYS[4], KEYS[i]) == 0 then return -2 end
end
local qold = qread(KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
qsync(qprefix(KEYS[3]), KEYS[1], ARGV[1], qold)
return 1
"""
)

# Count a (re)start of a partition's step at a cursor, for poison isolation.
# KEYS: lease, state ; ARGV: lease, cursor, max_recoveries, isolation_window
# state field 'recov' = "<cursor>|<attempts>|<isolated messages left>"  ->  {attempts, left} | {-1}
NOTE_RECOVERY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
local cur, n, left = ARGV[2], 0, 0
local v = redis.call('HGET', KEYS[2], 'recov')
if v and v ~= '' then
  local c, a, l = string.match(v, '^(.*)|(%d+)|(%d+)$')
  left = tonumber(l or '0')
  if c == cur then n = tonumber(a) end
end
n = n + 1
if n > tonumber(ARGV[3]) and left == 0 then left = tonumber(ARGV[4]) end
redis.call('HSET', KEYS[2], 'recov', cur .. '|' .. n .. '|' .. left)
return {n, left}
"""

# A partition owner's purge batch (retention, or a purge_orchestrations request).
# KEYS: 1 lease, 2 state, 3 index, 4 finished index, then per instance: hash, history, blob set,
#       then the blobs the caller read from the set
# ARGV: lease, state field of the request ('' = none), its new value ('' = HDEL), n,
#       then per instance: id, required status ('' = any terminal one), number of blobs
# Each instance is purged only if it is terminal (with that status) and its blob set is what the
# caller read; an instance that is not terminal leaves the finished index (it runs again).
# -> {1, purged ids...} | {-1} fenced
PURGE_BATCH = (
    _QLIB
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local QP = qprefix(KEYS[3])
local out = {1}
local k, a = 5, 5
for i = 1, tonumber(ARGV[4]) do
  local hk, lk, bs = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local iid, want, nb = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local st = redis.call('HGET', hk, 'status')
  local terminal = st == 'COMPLETED' or st == 'FAILED' or st == 'TERMINATED'
  local same = redis.call('SCARD', bs) == nb
  for j = 1, nb do
    if same and redis.call('SISMEMBER', bs, KEYS[k + 2 + j]) == 0 then same = false end
  end
  if terminal and (want == '' or want == st) and same then
    local qold = qread(hk)
    redis.call('DEL', hk, lk, bs)
    for j = 1, nb do redis.call('DEL', KEYS[k + 2 + j]) end
    redis.call('ZREM', KEYS[3], iid)
    redis.call('ZREM', KEYS[4], iid)
    qsync(QP, hk, iid, qold)
    out[#out + 1] = iid
  elseif not terminal then
    redis.call('ZREM', KEYS[4], iid)
  end
  k = k + 3 + nb
  a = a + 3
end
if ARGV[2] ~= '' then
  if ARGV[3] == '' then redis.call('HDEL', KEYS[2], ARGV[2])
  else redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
end
return out
"""
)
