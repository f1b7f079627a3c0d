-- notify.lua: "missed call" notifications, queued by the SIP routes and sent over HTTP
-- by a timer route, for route authors (Kamailio's mqueue + rtimer + http_client recipe).
--
--   local notify = require "notify"
--   notify.setup { queue = "notify", db = "notify" }
--
--   -- failure route of an INVITE (t_on_failure): unanswered, 404, 480, cancelled
--   notify.failure()
--
--   -- timer route ([modparams.rtimer] exec): send what is due
--   function ksr_notify_timer() notify.drain() end
--
-- notify.failure() looks at the winning reply of the failure route: an unanswered
-- call (a local 408 on fr_inv, the caller's CANCEL: 487) or a 404/480 (codes) queues
-- one item with KSR.mqueue.mq_add(queue, callee, record); the callee is the To user
-- (as dialed), the caller the From URI. It never waits and never
-- talks to the network: the caller gets its final reply at once.
--
-- notify.drain() (in a timer route, which may wait) takes at most `batch` items out of
-- the queue and, for each one that is due:
--
--   1. finds the callee's notify URL with sqlops, a bound parameter (never spliced
--      into the SQL): `target_query` on connection `db`, by default
--      SELECT url FROM notify_targets WHERE user = ?   (table: sip user -> URL);
--   2. POSTs a JSON notification (KSR.http_client.request, bounded by timeout_ms):
--        {"type":"missed_call","from":"sip:alice@...","to":"bob","code":480,
--         "time":1764460800,"attempt":1,"call-id":"..."}
--   3. 2xx: done. No answer, 408, 429 or 5xx: the item goes back to the queue with
--      attempts + 1, due again backoff_s * 2^(attempts-1) seconds (at most
--      max_backoff_s) after the failed attempt started; after max_attempts (0: never)
--      it is dropped and logged.
--      Another 4xx (the target refuses this notification for good) drops it, logged.
--      A user without a row: nothing to notify, dropped (logged at info). An SQL
--      error: back to the queue, as a failed POST.
--
-- Items not yet due go back to the queue untouched, so one run looks at each item at
-- most once (a bounded loop). An item due within slack_ms of the run is taken: timer
-- runs are not exactly an interval apart, and a retry due 1 s after an attempt made
-- at one run must not wait for the run after the next.
--
-- The clock: due times follow the server's clock (KSR.async.now_ms: Trio's monotonic
-- clock, virtual time in tests, so retries come at exact times there), anchored at the
-- wall clock (os.time) when first read: in milliseconds since the epoch, so the due
-- times of a persistent queue still mean something after a restart, and a step of the
-- wall clock (NTP) does not move the retries of a running server. Without
-- KSR.async.now_ms (another host of this file) it is os.time() * 1000. The "time" of the
-- notification is the wall clock (os.time) of the missed call. Records queued by an
-- older notify.lua (due in seconds) are read as such. With a persistent queue ([modparams.mqueue] dbmode=1)
-- a target that is down loses nothing, and what is pending at a restart is sent after
-- it. An item is out of the queue while its POST is in flight: a crash at that moment
-- loses that one item (the queue is at-most-once); a restart otherwise loses none.
--
-- Counters ($shv): notify:queued, notify:sent, notify:retried, notify:dropped.
--
-- Options of notify.setup (defaults):
--   queue          "notify"   the mqueue (declare it, with dbmode=1 to persist)
--   db             "notify"   the sqlops connection with the targets table
--   target_query   "SELECT url FROM notify_targets WHERE user = ?"
--   codes          {404, 408, 480, 487}  failure codes that count as missed
--   timeout_ms     2000       bound of one POST
--   backoff_s      2          first retry delay; doubles each time
--   max_backoff_s  300
--   max_attempts   0          0: retry until it is sent
--   slack_ms       100        an item due this close to a run is taken by it
--   batch          100        items looked at per drain() at most
--   authorization  nil        Authorization header value for the POSTs
--
-- Lua 5.1 (LuaJIT) to 5.4.

local notify = {}

local cfg = {
    queue = "notify",
    db = "notify",
    target_query = "SELECT url FROM notify_targets WHERE user = ?",
    codes = { 404, 408, 480, 487 },
    timeout_ms = 2000,
    backoff_s = 2,
    max_backoff_s = 300,
    max_attempts = 0,
    slack_ms = 100,
    batch = 100,
    authorization = nil,
}
local missed = {}

function notify.setup(opts)
    for k, v in pairs(opts or {}) do
        if cfg[k] == nil and k ~= "authorization" then
            error("notify.setup: unknown option " .. tostring(k), 2)
        end
        cfg[k] = v
    end
    missed = {}
    for _, c in ipairs(cfg.codes) do missed[c] = true end
end
notify.setup()

-- The clock of due times (see the header): ms since the epoch, following the server's.
local anchor_wall, anchor_mono
local function now_ms()
    local mono = KSR.async and KSR.async.now_ms and KSR.async.now_ms()
    if mono == nil then return os.time() * 1000 end
    if anchor_mono == nil then
        anchor_wall, anchor_mono = os.time() * 1000, mono
    end
    return anchor_wall + (mono - anchor_mono)
end
notify.now_ms = now_ms

--- The anchor of the clock: the wall clock (ms since the epoch) and the server's clock
--- (KSR.async.now_ms) when it was first read; nil before.
function notify.clock_anchor()
    return anchor_wall, anchor_mono
end

local function count(name, n)
    local key = "$shv(notify:" .. name .. ")"
    KSR.pv.seti(key, (tonumber(KSR.pv.get(key)) or 0) + (n or 1))
end

-- The queued record: "attempts|due|time|code|call-id|caller" (the caller last: it is the
-- only field that may hold a "|"); due in ms since the epoch (see the clock above), time
-- in seconds. The key of the item is the callee.
local function encode(r)
    return table.concat({ r.attempts, r.due, r.time, r.code, r.callid, r.caller }, "|")
end

local function decode(v)
    if v == nil then return nil end
    local a, d, t, c, ci, caller = string.match(v, "^(%d+)|(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$")
    if a == nil then return nil end
    d = tonumber(d)
    if d < 1e11 then d = d * 1000 end  -- an older notify.lua's record: seconds
    return { attempts = tonumber(a), due = d, time = tonumber(t),
             code = tonumber(c), callid = ci, caller = caller }
end
notify.encode, notify.decode = encode, decode

local json_string = require("tsip_json").string  -- lua/tsip_json.lua

--- The JSON body of the notification for `callee` and record `r`.
function notify.payload(callee, r)
    return "{" .. table.concat({
        '"type":"missed_call"',
        '"from":' .. json_string(r.caller),
        '"to":' .. json_string(callee),
        '"code":' .. r.code,
        '"time":' .. r.time,
        '"attempt":' .. (r.attempts + 1),
        '"call-id":' .. json_string(r.callid),
    }, ",") .. "}"
end

--- Queue a missed-call notification for `callee` (a SIP user) from `caller`.
--- 1 when queued, -1 when the queue does not exist.
function notify.missed_call(callee, caller, code, callid)
    local r = { attempts = 0, due = now_ms(), time = os.time(), code = code or 0,
                callid = (callid or ""):gsub("|", ""), caller = caller or "" }
    local rc = KSR.mqueue.mq_add(cfg.queue, callee, encode(r))
    if rc == 1 then
        count("queued")
        KSR.info("notify: missed call for " .. callee .. " from " .. r.caller
            .. " (" .. r.code .. ") queued\n")
    else
        KSR.err("notify: no mqueue " .. cfg.queue .. " (declare it in [modparams.mqueue])\n")
    end
    return rc
end

--- In a failure route: queue a notification when the call was missed (the winning
--- reply is one of `codes`). 1 queued, 0 not a missed call, -1 not queued.
function notify.failure()
    local code = KSR.pv.get("$T_reply_code")
    if KSR.tm.t_is_canceled() > 0 then code = 487 end
    code = tonumber(code) or 0
    if not missed[code] then return 0 end
    -- the callee as dialed: the To user (lookup() may have changed the R-URI to a
    -- device's Contact), else the R-URI user
    local callee = KSR.pv.get("$tU") or KSR.pv.get("$rU")
    if callee == nil or callee == "" then return -1 end
    return notify.missed_call(callee, KSR.pv.get("$fu"), code, KSR.pv.get("$ci"))
end

-- The notify URL of `user`: url, or nil and "none" (no row) or "error" (SQL failed).
local function target_of(user)
    local rc = KSR.sqlops.sql_query_params(cfg.db, cfg.target_query, "ntf", user)
    if rc < 0 then
        return nil, "error"
    end
    local url = nil
    if KSR.sqlops.sql_num_rows("ntf") > 0 then
        url = KSR.sqlops.sql_result_get("ntf", 0, 0)
    end
    KSR.sqlops.sql_result_free("ntf")
    if url == nil or url == "" then return nil, "none" end
    return url, nil
end
notify.target_of = target_of

local function backoff(attempts)
    local d = cfg.backoff_s * 2 ^ (attempts - 1)
    if d > cfg.max_backoff_s then d = cfg.max_backoff_s end
    return math.floor(d)
end

-- Back to the queue after a failure (of an attempt started at `started`, ms); dropped
-- after max_attempts.
local function retry(callee, r, why, started)
    r.attempts = r.attempts + 1
    if cfg.max_attempts > 0 and r.attempts >= cfg.max_attempts then
        count("dropped")
        KSR.err("notify: dropped the notification for " .. callee .. " after "
            .. r.attempts .. " attempts (" .. why .. ")\n")
        return
    end
    r.due = started + backoff(r.attempts) * 1000
    KSR.mqueue.mq_add(cfg.queue, callee, encode(r))
    count("retried")
    KSR.warn("notify: " .. callee .. ": " .. why .. "; retry " .. r.attempts .. " in "
        .. backoff(r.attempts) .. " s\n")
end

-- Send one notification; true when it is done with (sent, or dropped for good).
local function send_one(callee, r)
    local started = now_ms()
    local url, err = target_of(callee)
    if url == nil then
        if err == "none" then
            count("dropped")
            KSR.info("notify: no notify target for " .. callee .. ": dropped\n")
            return
        end
        return retry(callee, r, "target lookup failed", started)
    end
    local hdrs = "Content-Type: application/json"
    if cfg.authorization then hdrs = hdrs .. "\r\nAuthorization: " .. cfg.authorization end
    local code = KSR.http_client.request("POST", url, notify.payload(callee, r), hdrs,
                                         cfg.timeout_ms)
    if code >= 200 and code < 300 then
        count("sent")
        KSR.info("notify: sent to " .. callee .. " (" .. code .. ")\n")
    elseif code < 0 or code == 408 or code == 429 or code >= 500 then
        retry(callee, r, "POST " .. url .. " gave " .. code, started)
    else
        count("dropped")
        KSR.err("notify: " .. url .. " refused the notification for " .. callee .. " ("
            .. code .. "): dropped\n")
    end
end

--- In a timer route: send the notifications that are due. Returns how many items it
--- looked at.
function notify.drain()
    local n = KSR.mqueue.mq_size(cfg.queue)
    if n <= 0 then return 0 end
    if n > cfg.batch then n = cfg.batch end
    local now = now_ms()
    for i = 1, n do
        if KSR.mqueue.mq_fetch(cfg.queue) ~= 1 then return i - 1 end
        local callee = KSR.mqueue.mqk_get(cfg.queue)
        local value = KSR.mqueue.mqv_get(cfg.queue)
        local r = decode(value)
        if r == nil then
            count("dropped")
            KSR.err("notify: malformed queue item for " .. tostring(callee) .. ": "
                .. tostring(value) .. "\n")
        elseif r.due > now + cfg.slack_ms then
            KSR.mqueue.mq_add(cfg.queue, callee, value)  -- not due yet
        else
            send_one(callee, r)
        end
    end
    return n
end

return notify
