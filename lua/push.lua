-- push.lua: push notifications that wake the callee (RFC 8599), for route authors.
--
--   local push = require "push"
--   push.setup { gateway = "http://127.0.0.1:8088/push", authorization = "Bearer TOKEN" }
--
--   -- REGISTER route, after the binding is stored:
--   KSR.registrar.save("location", 0)
--   push.registered()
--
--   -- request route, an initial INVITE for one of our users, before lookup():
--   if push.invite() == 0 then KSR.x.exit() end   -- handled here
--   -- (-1: the callee has no push target: go on with lookup() + t_relay() as usual)
--
-- What push.invite() does, for the AoR of the Request-URI:
--
--   1. Its push targets: every binding whose Contact URI carries RFC 8599's
--      pn-provider and pn-prid (pn-param too when present; registrar save() keeps
--      the Contact URI whole), plus, with `htable` set, the record of the AoR in that
--      htable ("pn-provider=..;pn-prid=..[;pn-param=..]", several separated by ",")
--      for callees known only there. None: returns -1 and changes nothing.
--   2. The bindings without pn-* parameters are awake: the INVITE is relayed to them
--      at once (t_relay), so a desk phone rings while the mobile wakes up.
--   3. For each push target (once per pn-provider/pn-prid, one after the other) it
--      POSTs a JSON notification to the gateway with KSR.http_client.request (bounded by
--      http_timeout_ms, with the Authorization header when set):
--        {"type":"call","aor":"bob","pn-provider":"apns","pn-prid":"TOKEN",
--         "pn-param":"...","call-id":"...","from":"sip:alice@...","to":"sip:bob@..."}
--      A 2xx answer counts as sent. When no push could be sent (gateway down, slow
--      beyond http_timeout_ms, 4xx/5xx) and nothing was relayed: the caller gets
--      failure_code (480 Temporarily Unavailable) at once.
--   4. It waits for the callee's REGISTER (KSR.tmx.t_wait_event on "push:<aor>",
--      which push.registered() notifies) and relays the INVITE to every binding that
--      is fresh: new, or refreshed (another Call-ID or CSeq) since the INVITE came.
--      The location table is the truth, the event only a wake-up: a REGISTER that
--      arrived while the POST was still in flight is found as well.
--   5. Several devices: the INVITE goes to the first device the moment it registers
--      (no added delay), and every device that registers within fork_window_ms after
--      that first one is added as a new branch of the same transaction (parallel
--      forking, as Kamailio's tsilo ts_append does). A device registering later does
--      not get this call. Once the call is answered nobody is added.
--   6. No binding relayed by wait_ms after the pushes: failure_code (480).
--
-- The wait belongs to the INVITE's transaction: a CANCEL ends it (the caller gets
-- 487) and the route never resumes; so do fr and the lifetime. push.invite() raises
-- the transaction's fr_timer when it is shorter than the whole wait (it must run
-- before the transaction exists: before t_newtran or any other wait in the route).
-- If a branch fails before the window ends and no other branch is pending, the
-- transaction answers with that failure (tm's usual rule).
--
-- Not implemented (RFC 8599): the registrar's Feature-Caps "+sip.pns"/"+sip.pnsreg"
-- answers, pn-purr; the payload says "type":"call" (other requests are the route's
-- business).
--
-- Options of push.setup (defaults):
--   gateway          (required) URL of the push gateway, http or https
--   authorization    nil        Authorization header value for the gateway
--   http_timeout_ms  3000       bound of one POST to the gateway
--   wait_ms          20000      the first REGISTER must come within this after the push
--   fork_window_ms   5000       other devices may join until this after the first
--   table            "location" the usrloc table
--   htable           nil        htable with push records (key: the AoR)
--   use_domain       false      AoR "user@domain" (set as usrloc use_domain)
--   failure_code     480, failure_reason "Temporarily Unavailable"
--   key_prefix       "push:"    the t_wait_event key is key_prefix .. AoR
--
-- Lua 5.1 (LuaJIT) to 5.4.

local push = {}

local cfg = {
    gateway = nil,
    authorization = nil,
    http_timeout_ms = 3000,
    wait_ms = 20000,
    fork_window_ms = 5000,
    table = "location",
    htable = nil,
    use_domain = false,
    failure_code = 480,
    failure_reason = "Temporarily Unavailable",
    key_prefix = "push:",
}

local PROFILE = "push"
local MAX_WAKES = 64 -- wake-ups of one INVITE at most (each is a REGISTER of the AoR)

local NUMBERS = { http_timeout_ms = true, wait_ms = true, fork_window_ms = true,
                  failure_code = true }

--- Set options (see the top of this file); errors name the option, and a refused
--- setup changes nothing.
function push.setup(opts)
    local new = {}
    for k, v in pairs(cfg) do new[k] = v end
    for k, v in pairs(opts or {}) do
        if cfg[k] == nil and k ~= "gateway" and k ~= "authorization" and k ~= "htable" then
            error("push.setup: unknown option '" .. tostring(k) .. "'", 2)
        end
        if NUMBERS[k] and (type(v) ~= "number" or v < 0) then
            error("push.setup: " .. k .. " must be a number >= 0", 2)
        end
        new[k] = v
    end
    if type(new.gateway) ~= "string" or not new.gateway:match("^https?://") then
        error("push.setup: gateway must be an http(s) URL", 2)
    end
    if new.authorization ~= nil and (type(new.authorization) ~= "string"
            or new.authorization:find("[\r\n]")) then
        error("push.setup: authorization must be a one-line string", 2)
    end
    if new.failure_code % 1 ~= 0 or new.failure_code < 300 or new.failure_code > 699 then
        error("push.setup: failure_code must be a final failure status (300..699)", 2)
    end
    for _, k in ipairs({ "table", "key_prefix", "failure_reason" }) do
        if type(new[k]) ~= "string" or new[k] == "" then
            error("push.setup: " .. k .. " must be a non-empty string", 2)
        end
    end
    if new.htable ~= nil and (type(new.htable) ~= "string" or new.htable == "") then
        error("push.setup: htable must be the name of an htable", 2)
    end
    cfg = new
    return push
end

--- The options in force (a copy).
function push.options()
    local out = {}
    for k, v in pairs(cfg) do out[k] = v end
    return out
end

local function aor_of(user, domain)
    local aor = user or ""
    if cfg.use_domain and domain then aor = aor .. "@" .. domain end
    return string.lower(aor)
end

--- The t_wait_event key of an AoR.
function push.key(aor)
    return cfg.key_prefix .. aor
end

--- REGISTER route, after save(): wake the INVITEs waiting for this AoR. Returns the
--- number of waiting INVITEs woken (-1: none waited).
function push.registered()
    local aor = aor_of(KSR.pv.get("$tU"), KSR.pv.get("$td"))
    return KSR.tmx.t_notify_event(push.key(aor), "1")
end

-- RFC 8599 parameters of a Contact URI (nil when it has no pn-provider/pn-prid).
local function pn_params(uri)
    local params = {}
    -- the URI parameters: after the host part, before any headers (?)
    local head = uri:gsub("%?.*$", "")
    for name, value in head:gmatch(";%s*([%w%-%.!%%%*_%+`'~]+)=([^;]*)") do
        params[string.lower(name)] = value
    end
    if params["pn-provider"] and params["pn-prid"] then
        return { provider = params["pn-provider"], prid = params["pn-prid"],
                 param = params["pn-param"] }
    end
    return nil
end
push.pn_params = pn_params

local function htable_targets(aor)
    local out = {}
    if not cfg.htable then return out end
    local rec = KSR.htable.sht_get(cfg.htable, aor)
    if type(rec) ~= "string" then return out end
    for item in rec:gmatch("[^,]+") do
        local t = pn_params(";" .. item)
        if t then out[#out + 1] = t end
    end
    return out
end

-- The live bindings of the AoR of `uri`: a list of {addr, ruid, stamp, received, path, pn}.
local function bindings(uri)
    local out = {}
    if KSR.registrar.reg_fetch_contacts(cfg.table, uri, PROFILE) < 0 then return out end
    local n = KSR.registrar.ulc_rget(PROFILE, "count") or 0
    for i = 0, n - 1 do
        local addr = KSR.registrar.ulc_cget(PROFILE, "addr", i)
        out[#out + 1] = {
            addr = addr,
            ruid = KSR.registrar.ulc_cget(PROFILE, "ruid", i),
            stamp = tostring(KSR.registrar.ulc_cget(PROFILE, "callid", i)) .. "/"
                .. tostring(KSR.registrar.ulc_cget(PROFILE, "cseq", i)),
            received = KSR.registrar.ulc_cget(PROFILE, "received", i),
            path = KSR.registrar.ulc_cget(PROFILE, "path", i),
            pn = pn_params(addr),
        }
    end
    KSR.registrar.reg_free_contacts(PROFILE)
    return out
end

local json_string = require("tsip_json").string  -- lua/tsip_json.lua
push.json_string = json_string

--- The JSON body of a push for target `t` (fields with nil values are left out).
function push.payload(aor, t)
    local fields = {
        { "type", "call" }, { "aor", aor }, { "pn-provider", t.provider },
        { "pn-prid", t.prid }, { "pn-param", t.param },
        { "call-id", KSR.pv.get("$ci") }, { "from", KSR.pv.get("$fu") },
        { "to", KSR.pv.get("$tu") },
    }
    local parts = {}
    for _, f in ipairs(fields) do
        if f[2] ~= nil then parts[#parts + 1] = json_string(f[1]) .. ":" .. json_string(f[2]) end
    end
    return "{" .. table.concat(parts, ",") .. "}"
end

-- POST one push; true when the gateway took it (2xx).
local function send_push(aor, t)
    local hdrs = "Content-Type: application/json"
    if cfg.authorization then hdrs = hdrs .. "\r\nAuthorization: " .. cfg.authorization end
    local code = KSR.http_client.request("POST", cfg.gateway, push.payload(aor, t), hdrs,
                                         cfg.http_timeout_ms)
    if code >= 200 and code < 300 then
        KSR.info("push: sent for " .. aor .. " (" .. t.provider .. ")")
        return true
    end
    KSR.warn("push: the gateway did not take the push for " .. aor .. " (" .. code .. ")")
    return false
end

-- Relay the INVITE to binding b as one more branch of the transaction.
local function relay_to(b)
    KSR.seturi(b.addr)
    local dst = b.received
    if b.path then dst = b.path:match("<([^>]+)>") or b.path end
    if dst then KSR.setdsturi(dst) else KSR.resetdsturi() end
    return KSR.tm.t_relay()
end

local function answered()
    return KSR.tm.t_get_status_code() >= 200
end

-- Relay to the bindings `pick(b)` accepts that have no branch yet; the number relayed.
local function relay_new(uri, forked, pick)
    local n = 0
    for _, b in ipairs(bindings(uri)) do
        if not forked[b.ruid] and pick(b) then
            forked[b.ruid] = true
            if answered() then return n end
            if relay_to(b) > 0 then
                n = n + 1
            else
                KSR.warn("push: cannot relay to " .. b.addr)
            end
        end
    end
    return n
end

--- Request route, initial INVITE for a local user: push, wait for the REGISTER, relay
--- (see the top of this file). 0: handled (relayed, or answered); -1: no push target.
function push.invite()
    if type(cfg.gateway) ~= "string" then
        error("push.invite: call push.setup{gateway = ...} first", 2)
    end
    local uri = KSR.pv.get("$ru")
    local aor = aor_of(KSR.pv.get("$rU"), KSR.pv.get("$rd"))
    local before = bindings(uri)
    local targets, seen = {}, {}
    local function add(t)
        local id = t.provider .. "\0" .. t.prid
        if not seen[id] then
            seen[id] = true
            targets[#targets + 1] = t
        end
    end
    for _, b in ipairs(before) do
        if b.pn then add(b.pn) end
    end
    for _, t in ipairs(htable_targets(aor)) do add(t) end
    if #targets == 0 then return -1 end

    -- the whole wait must fit in the transaction's fr (bound of a transaction that has
    -- no branch yet); only raised, and only before the transaction exists
    local need = #targets * cfg.http_timeout_ms + cfg.wait_ms + cfg.fork_window_ms + 1000
    local fr = (tonumber(KSR.pv.get("$T_fr_timeout")) or 0) * 1000
    if fr < need then KSR.tm.t_set_fr(0, need) end

    local stamp = {}
    for _, b in ipairs(before) do stamp[b.ruid] = b.stamp end
    local forked = {}
    -- awake bindings (no pn-* params) ring at once
    local relayed = relay_new(uri, forked, function(b) return b.pn == nil end)

    local sent = 0
    for _, t in ipairs(targets) do
        if send_push(aor, t) then sent = sent + 1 end
    end
    if sent == 0 then
        if relayed == 0 and not answered() then
            KSR.tm.t_reply(cfg.failure_code, cfg.failure_reason)
        end
        return 0
    end

    local key = push.key(aor)
    local deadline = KSR.async.now_ms() + cfg.wait_ms
    local window_end = nil
    local function fresh(b) return stamp[b.ruid] ~= b.stamp end
    for _ = 1, MAX_WAKES do
        local woke = relay_new(uri, forked, fresh)
        if answered() then return 0 end
        if woke > 0 and window_end == nil then
            window_end = KSR.async.now_ms() + cfg.fork_window_ms
        end
        local now = KSR.async.now_ms()
        local limit = window_end or deadline
        if now >= limit then break end
        KSR.tmx.t_wait_event(key, limit - now)
    end
    if window_end == nil and relayed == 0 and not answered() then
        KSR.info("push: " .. aor .. " did not register within " .. cfg.wait_ms .. " ms")
        KSR.tm.t_reply(cfg.failure_code, cfg.failure_reason)
    end
    return 0
end

return push
