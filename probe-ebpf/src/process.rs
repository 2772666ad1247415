//! Processes: exec, exit (code or fatal signal) and OOM kills, as ring-buffer events.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    BPF_RB_NO_WAKEUP,
    tp, EventHeader, EventKind, ExecEvent, ExitEvent, OomEvent, ProgId, EXIT_CODE_UNKNOWN,
    OFFSET_NONE,
};

use crate::record::field;
use crate::maps::{config, count_event, count_lost_ringbuf, current_tgid, EVENTS};

#[inline(always)]
fn header(kind: EventKind, tgid: u32) -> EventHeader {
    EventHeader { kind: kind as u32, tgid, ktime_ns: unsafe { bpf_ktime_get_ns() } }
}

/// The kernfs id of the current task's cgroup in the cgroup v1 hierarchy the daemon chose
/// (`KernelConfig::css_set_subsys`): task → css_set → that controller's css → cgroup → kernfs
/// node. 0 when the offsets are not set (no v1 hierarchy) or a read fails.
#[inline(always)]
fn cgroup1_id() -> u64 {
    let c = config();
    if c.task_cgroups == OFFSET_NONE || c.css_set_subsys == OFFSET_NONE || c.css_cgroup == OFFSET_NONE || c.cgroup_kn == OFFSET_NONE || c.kernfs_node_id == OFFSET_NONE {
        return 0;
    }
    let ptr = |base: u64, off: u32| -> u64 {
        if base == 0 {
            return 0;
        }
        unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.unwrap_or(0)
    };
    let task = unsafe { bpf_get_current_task() };
    let cset = ptr(task, c.task_cgroups);
    let css = ptr(cset, c.css_set_subsys);
    let cgroup = ptr(css, c.css_cgroup);
    let kn = ptr(cgroup, c.cgroup_kn);
    ptr(kn, c.kernfs_node_id)
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SchedProcessExec;
    count_event(prog);
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost_ringbuf(prog);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    let tgid = current_tgid();
    unsafe {
        (*ev).header = header(EventKind::Exec, tgid);
        (*ev).ppid = 0;
        (*ev).cgroup_id = aya_ebpf::helpers::bpf_get_current_cgroup_id();
        (*ev).cgroup1_id = cgroup1_id();
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).filename = [0; probe_common::FILENAME_LEN];
        (*ev).filename_len = 0;
        // __data_loc: low 16 bits offset from the record start, high 16 bits length.
        let loc: u32 = field(&ctx, tp::EXEC_FILENAME);
        let src = (EbpfContext::as_ptr(&ctx) as *const u8).add((loc & 0xffff) as usize);
        if let Ok(s) = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) {
            (*ev).filename_len = s.len() as u32;
        }
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let prog = ProgId::SchedProcessExit;
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((id >> 32) as u32, id as u32);
    let task = unsafe { bpf_get_current_task() };

    // Only the exit of a whole process is an event: the tracepoint's group_dead where the kernel
    // has it, else signal->live reaching zero, else the group leader's exit.
    let group_dead = if cfg.tp_exit_group_dead != OFFSET_NONE {
        unsafe { ctx.read_at::<u8>(cfg.tp_exit_group_dead as usize) }.map(|v| v != 0).unwrap_or(pid == tgid)
    } else if cfg.task_signal != OFFSET_NONE && cfg.signal_live != OFFSET_NONE {
        let signal: u64 = unsafe { bpf_probe_read_kernel((task + cfg.task_signal as u64) as *const u64) }.unwrap_or(0);
        if signal == 0 {
            pid == tgid
        } else {
            unsafe { bpf_probe_read_kernel((signal + cfg.signal_live as u64) as *const i32) }
                .map(|live| live == 0)
                .unwrap_or(pid == tgid)
        }
    } else {
        pid == tgid
    };
    if !group_dead {
        return 0;
    }
    count_event(prog);
    let exit_code = if cfg.task_exit_code != OFFSET_NONE && task != 0 {
        unsafe { bpf_probe_read_kernel((task + cfg.task_exit_code as u64) as *const i32) }
            .map(|c| c as u32)
            .unwrap_or(EXIT_CODE_UNKNOWN)
    } else {
        EXIT_CODE_UNKNOWN
    };
    // A helper read: the verifier refuses the byte loads through a moved context pointer that a
    // direct copy of the array compiles to (and exits are rare).
    let comm = unsafe { ctx.read_at::<[u8; 16]>(tp::EXIT_COMM as usize) }.unwrap_or([0; 16]);
    let ev = ExitEvent { header: header(EventKind::Exit, tgid), pid, exit_code, comm };
    if EVENTS.output::<ExitEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let prog = ProgId::OomMarkVictim;
    count_event(prog);
    let victim: i32 = field(&ctx, tp::MARK_VICTIM_PID);
    debug!(&ctx, "OOM killer marked pid {} as victim", victim);
    let ev = OomEvent { header: header(EventKind::OomVictim, victim as u32), victim: victim as u32, _pad: 0 };
    if EVENTS.output::<OomEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_lost_ringbuf(prog);
    }
    0
}
