-- Move a session to a new id (login, rotate): write it under the new key, leave a
-- short-lived "moved" marker under the old key in the same step (a request of the same
-- browser still carrying the old cookie then gets an inert empty session, not a new
-- session whose cookie could replace the new one), and record the new id in the user's
-- index.
--
-- KEYS[1]  the new session key (written with NX: a fresh random id)
-- KEYS[2]  the user's index (sorted set of session ids), when ARGV[5] ~= ''
-- KEYS[#]  the old session key, last, when ARGV[7] == '1' (on a Redis Cluster the caller
--          marks an old key of another slot itself, before this script runs)
--
-- ARGV[1]  the encoded session
-- ARGV[2]  the session TTL (seconds)
-- ARGV[3]  the new session id (the index member)
-- ARGV[4]  the old session id (removed from the index, if it is there)
-- ARGV[5]  the index score of the new id: when its session is surely dead (epoch
--          seconds), or '' for a session without a user (no index)
-- ARGV[6]  now (epoch seconds): index entries scored before it are pruned
-- ARGV[7]  '1' when the old key is KEYS[#]
-- ARGV[8]  '1' when the old session must still exist: rotating a stored session that was
--          revoked meanwhile must not bring it back
-- ARGV[9]  the index TTL (seconds): the index outlives every session it lists
-- ARGV[10] how the "moved" marker begins (bytes no session can begin with)
-- ARGV[11] the marker to leave under the old id (ARGV[10], then until when it holds)
-- ARGV[12] the marker's TTL (seconds)
--
-- Returns 1 when the session was written, 0 when the old session was gone, 2 when it was
-- already moved by a concurrent login or rotation (nothing written in either case), -1
-- when the new id was taken (nothing written).

local has_index = ARGV[5] ~= ''
local old = nil
if ARGV[7] == '1' then
    old = KEYS[#KEYS]
    local kind = redis.call('TYPE', old)['ok']
    local moved = kind == 'string' and string.sub(redis.call('GET', old), 1, #ARGV[10]) == ARGV[10]
    if ARGV[8] == '1' and (kind == 'none' or moved) then
        if moved then
            return 2
        end
        return 0
    end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return -1
end
if old then
    redis.call('SET', old, ARGV[11], 'EX', ARGV[12])
end
if has_index then
    local index = KEYS[2]
    redis.call('ZREM', index, ARGV[4])
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. ARGV[6])
    redis.call('ZADD', index, ARGV[5], ARGV[3])
    if redis.call('TTL', index) < tonumber(ARGV[9]) then
        redis.call('EXPIRE', index, ARGV[9])
    end
end
return 1
