-- Destroy every session of one user: tc.sessions.revoke_user(user_id).
--
-- KEYS[1]  the user's index: a sorted set of session ids, each scored by the time after
--          which its session cannot be alive any more (epoch seconds).
-- ARGV[1]  the session key prefix (SESSION_KEY_PREFIX): a session's key is prefix .. id.
-- ARGV[2]  how the "moved" marker a login or rotation leaves under an old id begins (no
--          session: counted as none, and left to expire)
--
-- Returns how many sessions existed and were deleted (entries of sessions that already
-- expired or were logged out count nothing). The index goes too.
--
-- The session keys are not in KEYS because only the index knows them. On a Redis
-- Cluster they share the index's slot: a user's session ids and index key carry the same
-- hash tag ({xxxx}, from the user id), so this one script runs on one node.

local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local deleted = 0
for _, id in ipairs(ids) do
    local key = ARGV[1] .. id
    local kind = redis.call('TYPE', key)['ok']
    if not (kind == 'string' and string.sub(redis.call('GET', key), 1, #ARGV[2]) == ARGV[2]) then
        deleted = deleted + redis.call('DEL', key)
    end
end
redis.call('DEL', KEYS[1])
return deleted
