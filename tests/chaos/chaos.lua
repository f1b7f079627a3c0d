-- tests/chaos/chaos.lua: the stateful proxy of the chaos scenarios.
--
-- routes/stateful.lua's shape (record-route, loose_route for in-dialog requests,
-- CANCEL relayed when it matches), plus parallel forking to the URIs of an X-Fork
-- header, and a count of the request route runs per Call-ID for INVITEs (RUNS): a
-- retransmission must be absorbed by its transaction, never routed again. The onreply
-- and failure routes wait a little (KSR.async.ms_sleep) inside the transaction's task,
-- so that events queue up behind a suspended route and every coroutine must end.
-- Calls with an X-Rtp header wait for a (scripted, sometimes slow or failing) rtpengine
-- in the request route: rtpengine_offer on the INVITE, rtpengine_delete on its BYE.

RUNS = {}
RTP = {}

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return
    end
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        end
        return
    end
    if KSR.siputils.has_totag() > 0 then
        if KSR.is_BYE() and RTP[KSR.pv.get("$ci")] ~= nil then
            RTP[KSR.pv.get("$ci")] = nil
            KSR.rtpengine.rtpengine_delete("")
        end
        if KSR.rr.loose_route() > 0 then
            KSR.tm.t_relay()  -- the ACK of a 2xx statelessly, a BYE statefully
            return
        end
        if not KSR.is_ACK() then
            KSR.sl.sl_send_reply(404, "Not here")
        end
        return
    end
    if KSR.is_ACK() then
        return  -- the ACK of a transaction that is gone
    end
    if KSR.is_INVITE() then
        local ci = KSR.pv.get("$ci")
        RUNS[ci] = (RUNS[ci] or 0) + 1
    end
    if KSR.is_INVITE() and KSR.hdr.is_present("X-Rtp") > 0 then
        -- a failing rtpengine does not stop the call: it goes on without anchoring
        if KSR.rtpengine.rtpengine_offer("") > 0 then
            RTP[KSR.pv.get("$ci")] = 1
        end
    end
    KSR.rr.record_route()
    local fork = KSR.hdr.get("X-Fork")
    if fork ~= nil then
        for uri in string.gmatch(fork, "[^,]+") do
            KSR.corex.append_branch_uri(uri)
        end
    end
    KSR.tm.t_on_failure("ksr_failure")
    KSR.tm.t_on_reply("ksr_onreply")
    KSR.tm.t_relay()
end

function ksr_onreply()
    if KSR.pv.get("$rs") == 180 then
        KSR.async.ms_sleep(30)
    end
    return 1
end

function ksr_failure()
    KSR.async.ms_sleep(20)
    if KSR.tm.t_is_canceled() > 0 then
        return 1
    end
    return 1
end
