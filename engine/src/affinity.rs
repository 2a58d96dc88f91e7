//! Pinning long-lived threads (appender, applier, sender) to cores.

/// Checks that `core` exists, so a bad setting fails at start with the list
/// of valid cores rather than silently leaving a thread unpinned.
pub(crate) fn check_core(setting: &str, core: usize) -> Result<(), String> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.iter().any(|c| c.id == core) {
        return Ok(());
    }
    Err(format!(
        "{setting} {core} does not exist; this machine has cores {:?}",
        cores.iter().map(|c| c.id).collect::<Vec<_>>()
    ))
}

/// Pins the calling thread to `core`, if one is set. Checked at start;
/// pinning is an optimisation, so a refusal here (e.g. a restrictive cpuset
/// applied later) leaves the thread unpinned.
pub(crate) fn pin_current(core: Option<usize>) {
    if let Some(id) = core {
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}
