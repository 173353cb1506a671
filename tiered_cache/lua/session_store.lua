-- Rewrite an existing session, and renew its entry in the user's index when given: every
-- write of a changed session, and of one whose cookie is reissued (past half of its
-- lifetime). Or delete one its request emptied (ARGV[1] = ''), with its index entry.
--
-- KEYS[1]  the session key
-- KEYS[2]  the user's index (sorted set of session ids), when ARGV[4] ~= ''
--
-- ARGV[1]  the encoded session, or '' to delete it
-- ARGV[2]  the session TTL (seconds)
-- ARGV[3]  the bytes the request loaded, when the session is unmodified: the write only
--          happens if they are still there (another request's change is never
--          overwritten by a mere renewal); '' for a modified session (last write wins)
-- ARGV[4]  the index score of this session id (epoch seconds), or '' (no user, no index)
-- ARGV[5]  the session id (the index member)
-- ARGV[6]  now (epoch seconds): index entries scored before it are pruned
-- ARGV[7]  the index TTL (seconds)
-- ARGV[8]  how the "moved" marker a login or rotation leaves under the old id begins
--
-- Returns 1 when written (or deleted), 0 when the session is gone (revoked, logged out,
-- expired, or moved to a new id: it is never brought back, and a move's marker is never
-- deleted), -1 when a renewal found it changed by another request meanwhile.

local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
    return 0
end
if kind == 'string' then
    local current = redis.call('GET', KEYS[1])
    if string.sub(current, 1, #ARGV[8]) == ARGV[8] then
        return 0
    end
    if ARGV[3] ~= '' and current ~= ARGV[3] then
        return -1
    end
elseif ARGV[3] ~= '' then
    return -1
end
if ARGV[1] == '' then
    redis.call('DEL', KEYS[1])
    if ARGV[4] ~= '' then
        redis.call('ZREM', KEYS[2], ARGV[5])
    end
    return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'XX', 'EX', ARGV[2])
if ARGV[4] ~= '' then
    local index = KEYS[2]
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. ARGV[6])
    redis.call('ZADD', index, ARGV[4], ARGV[5])
    if redis.call('TTL', index) < tonumber(ARGV[7]) then
        redis.call('EXPIRE', index, ARGV[7])
    end
end
return 1
