//! TCP: connection outcomes, accepts, active connections, resets and retransmits.
//!
//! `sock:inet_sock_set_state` fires in process context for connect() and listen() but in softirq
//! context for most other transitions, where the current task is whoever was interrupted. So the
//! owner of a socket is remembered when it is known (SYN_SENT from connect(), the listener's process
//! for a passive open) and looked up by socket address afterwards.
use aya_ebpf::{
    macros::tracepoint, programs::TracePointContext,
};
use probe_common::{
    tp, KernelConfig, ListenKey, ProcCounters, ProgId, ECONNREFUSED, ECONNRESET, ETIMEDOUT,
    IPPROTO_TCP, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT,
};

use crate::record::field;
use crate::maps::{
    config, count_event, count_lost_map_full, current_tgid, proc_counters, read_kernel, LISTENERS, SOCK_OWNERS,
};

/// Owner of a socket: the remembered one, else 0 (unattributed).
#[inline(always)]
fn owner(sk: u64) -> u32 {
    match unsafe { SOCK_OWNERS.get(&sk) } {
        Some(t) => *t,
        None => 0,
    }
}

/// Network namespace inode of a socket (0 when the kernel layout is unknown).
#[inline(always)]
fn sock_netns(cfg: &KernelConfig, sk: u64) -> u32 {
    let net: u64 = match read_kernel(sk, cfg.sock_net) {
        Some(n) => n,
        None => return 0,
    };
    read_kernel::<u32>(net, cfg.net_ns_inum).unwrap_or(0)
}

#[inline(always)]
fn with_counters(prog: ProgId, tgid: u32, f: impl FnOnce(&mut ProcCounters)) {
    if let Some(c) = proc_counters(prog, tgid) {
        f(c);
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    set_state(&ctx);
    0
}

fn set_state(ctx: &TracePointContext) {
    let prog = ProgId::InetSockSetState;
    let protocol: u16 = field(ctx, tp::INET_SOCK_SET_STATE_PROTOCOL);
    if protocol != IPPROTO_TCP {
        return;
    }
    count_event(prog);
    let sk: u64 = field(ctx, tp::INET_SOCK_SET_STATE_SKADDR);
    let old: i32 = field(ctx, tp::INET_SOCK_SET_STATE_OLDSTATE);
    let new: i32 = field(ctx, tp::INET_SOCK_SET_STATE_NEWSTATE);
    // Most transitions of a connection's life (FIN_WAIT*, CLOSE_WAIT, LAST_ACK, TIME_WAIT, …)
    // count nothing: leave before any map work.
    let counts = new == TCP_SYN_SENT || new == TCP_LISTEN || old == TCP_LISTEN || old == TCP_SYN_SENT || old == TCP_ESTABLISHED || (old == TCP_SYN_RECV && new == TCP_ESTABLISHED);
    if !counts {
        return;
    }
    let cfg = config();

    if new == TCP_SYN_SENT {
        // connect(): process context, the caller owns the socket.
        let tgid = current_tgid();
        if SOCK_OWNERS.insert(&sk, &tgid, 0).is_err() {
            count_lost_map_full(prog);
        }
        return;
    }
    if new == TCP_LISTEN {
        let tgid = current_tgid();
        if LISTENERS.insert(&listen_key(ctx, &cfg, sk), &tgid, 0).is_err() {
            count_lost_map_full(prog);
        }
        return;
    }
    if old == TCP_LISTEN {
        if new == TCP_SYN_RECV {
            // A child socket cloned from a listener (softirq): it belongs to the listener's process.
            let tgid = listener_owner(ctx, &cfg, sk);
            if tgid != 0 && SOCK_OWNERS.insert(&sk, &tgid, 0).is_err() {
                count_lost_map_full(prog);
            }
        } else if new == TCP_CLOSE {
            // The listener went away.
            let _ = LISTENERS.remove(&listen_key(ctx, &cfg, sk));
        }
        return;
    }

    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // Passive open completed.
        let mut tgid = owner(sk);
        if tgid == 0 {
            tgid = listener_owner(ctx, &cfg, sk);
        }
        with_counters(prog, tgid, |c| {
            c.tcp_accepts += 1;
            c.tcp_established_opened += 1;
        });
        return;
    }

    let tgid = owner(sk);
    if old == TCP_SYN_SENT {
        if new == TCP_ESTABLISHED {
            with_counters(prog, tgid, |c| {
                c.tcp_connect_ok += 1;
                c.tcp_established_opened += 1;
            });
        } else if new == TCP_CLOSE {
            // sk_err is set before tcp_done() moves the socket to CLOSE. No error means the
            // application gave up first (a dial timeout closing the socket): counted as timeout.
            let err: i32 = read_kernel(sk, cfg.sock_err).unwrap_or(-1);
            with_counters(prog, tgid, |c| match err {
                ECONNREFUSED => c.tcp_connect_refused += 1,
                ETIMEDOUT | 0 => c.tcp_connect_timeout += 1,
                ECONNRESET => c.tcp_connect_reset += 1,
                _ => c.tcp_connect_error += 1,
            });
        }
    } else if old == TCP_ESTABLISHED {
        // An unknown owner (0) is where the open of such a socket was counted too.
        with_counters(prog, tgid, |c| c.tcp_established_closed += 1);
    }
    // The owner stays remembered after CLOSE: a close with SO_LINGER 0 moves to CLOSE before it
    // sends its RST, and late retransmits or resets may follow. The LRU map forgets old sockets;
    // a reused address is overwritten at its SYN_SENT or SYN_RECV.
}

/// Owner of the listener on the socket's (netns, family, local port), else 0.
#[inline(always)]
fn listener_owner(ctx: &TracePointContext, cfg: &KernelConfig, sk: u64) -> u32 {
    match unsafe { LISTENERS.get(&listen_key(ctx, cfg, sk)) } {
        Some(t) => *t,
        None => 0,
    }
}

#[inline(always)]
fn listen_key(ctx: &TracePointContext, cfg: &KernelConfig, sk: u64) -> ListenKey {
    let family: u16 = field(ctx, tp::INET_SOCK_SET_STATE_FAMILY);
    let port: u16 = field(ctx, tp::INET_SOCK_SET_STATE_SPORT);
    ListenKey { netns: sock_netns(cfg, sk), family, port }
}

/// Counts one event on the socket read at `off` for its owner.
#[inline(always)]
fn count_on_socket(ctx: &TracePointContext, prog: ProgId, off: u32, f: impl FnOnce(&mut ProcCounters)) {
    count_event(prog);
    let sk: u64 = field(ctx, off);
    let tgid = if sk == 0 { 0 } else { owner(sk) };
    with_counters(prog, tgid, f);
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    count_on_socket(&ctx, ProgId::TcpSendReset, tp::TCP_SEND_RESET_SKADDR, |c| {
        c.tcp_resets_sent += 1
    });
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    count_on_socket(&ctx, ProgId::TcpReceiveReset, tp::TCP_RECEIVE_RESET_SKADDR, |c| {
        c.tcp_resets_received += 1
    });
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    count_on_socket(&ctx, ProgId::TcpRetransmitSkb, tp::TCP_RETRANSMIT_SKB_SKADDR, |c| {
        c.tcp_retransmits += 1
    });
    0
}
