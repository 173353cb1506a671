-- Move a session to a new id (login, rotate): write it under the new key, delete the old
-- key in the same step, and record the new id in the user's index.
--
-- KEYS[1]  the new session key (written with NX: a fresh random id)
-- KEYS[2]  the user's index (sorted set of session ids), when ARGV[5] ~= ''
-- KEYS[#]  the old session key, last, when ARGV[7] == '1' (on a Redis Cluster the caller
--          deletes an old key of another slot itself, before this script runs)
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
--
-- Returns 1 when the session was written, 0 when the old session was gone (nothing
-- written), -1 when the new id was taken (nothing written).

local has_index = ARGV[5] ~= ''
if ARGV[7] == '1' then
    local existed = redis.call('DEL', KEYS[#KEYS])
    if existed == 0 and ARGV[8] == '1' then
        return 0
    end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return -1
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
