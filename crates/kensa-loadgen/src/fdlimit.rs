//! The load generator's own open-file limit (`RLIMIT_NOFILE`): every simulated agent holds a
//! socket, and most shells start programs with a soft limit of 1,024 or so.
//!
//! At start the soft limit is raised to the hard limit; when the hard limit is below what the
//! run needs it is raised too, which only works with `CAP_SYS_RESOURCE` (root). When
//! even that fails the run goes on (agents beyond the limit fail to connect and are counted)
//! after printing how to raise the hard limit.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde_json::{json, Value};

/// File descriptors the load generator uses besides agent sockets (stdio, sinks, the API
/// client's pool, the runtime), with room to spare.
pub const BASE_DESCRIPTORS: u64 = 256;

/// What to set, given the current limits and what is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The soft limit is already the hard limit (or, with no hard limit, covers the need).
    Keep,
    /// Raise the soft limit to this value (the hard limit).
    RaiseSoft(u64),
    /// The hard limit is too low: try raising both to this value.
    RaiseHard(u64),
}

pub fn decide(soft: u64, hard: u64, needed: u64) -> Decision {
    if hard < needed {
        Decision::RaiseHard(needed)
    } else if hard == nix::sys::resource::RLIM_INFINITY {
        // The kernel refuses an infinite soft limit for open files (fs.nr_open caps it).
        if soft >= needed {
            Decision::Keep
        } else {
            Decision::RaiseSoft(needed)
        }
    } else if soft < hard {
        Decision::RaiseSoft(hard)
    } else {
        Decision::Keep
    }
}

/// Raises the limit for `needed` descriptors as far as allowed; returns the report section.
pub fn raise(needed: u64) -> Value {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return json!({"needed": needed, "error": "getrlimit failed"});
    };
    let (after_soft, after_hard) = match decide(soft, hard, needed) {
        Decision::Keep => (soft, hard),
        Decision::RaiseSoft(value) => match setrlimit(Resource::RLIMIT_NOFILE, value, hard) {
            Ok(()) => (value, hard),
            Err(_) => (soft, hard),
        },
        Decision::RaiseHard(value) => {
            match setrlimit(Resource::RLIMIT_NOFILE, value, value) {
                Ok(()) => (value, value),
                // Not allowed to raise the hard limit: take all of it.
                Err(_) => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => (hard, hard),
                    Err(_) => (soft, hard),
                },
            }
        }
    };
    let enough = after_soft >= needed;
    if !enough {
        eprintln!(
            "kensa-loadgen: WARNING: this run needs about {needed} open files but the limit is \
             {after_soft} (hard limit {after_hard}); agents beyond it will fail to connect.\n\
             kensa-loadgen: raise the hard limit (as root) before starting it: `ulimit -Hn \
             {needed}` in the same shell, or `prlimit --nofile={needed}:{needed} --pid <pid of \
             that shell>`, or a `* hard nofile {needed}` line in /etc/security/limits.conf \
             (LimitNOFILE={needed} for a systemd unit); fs.nr_open caps it."
        );
    }
    json!({
        "needed": needed,
        "soft_before": soft,
        "hard_before": hard,
        "soft": after_soft,
        "hard": after_hard,
        "enough": enough,
    })
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::RLIM_INFINITY;

    use super::*;

    #[test]
    fn decisions() {
        let cases = [
            // (soft, hard, needed, decision)
            (1024, 524_288, 500, Decision::RaiseSoft(524_288)),
            (524_288, 524_288, 10_256, Decision::Keep),
            (1024, 524_288, 10_256, Decision::RaiseSoft(524_288)),
            (1024, RLIM_INFINITY, 10_256, Decision::RaiseSoft(10_256)),
            (65_536, RLIM_INFINITY, 10_256, Decision::Keep),
            (1024, 20_000, 40_256, Decision::RaiseHard(40_256)),
            (20_000, 20_000, 20_001, Decision::RaiseHard(20_001)),
        ];
        for (soft, hard, needed, expected) in cases {
            assert_eq!(
                decide(soft, hard, needed),
                expected,
                "{soft}/{hard} for {needed}"
            );
        }
    }

    #[test]
    fn a_modest_need_is_met() {
        let report = raise(300);
        assert_eq!(report["enough"], true, "{report}");
        assert!(report["soft"].as_u64().unwrap() >= 300, "{report}");
    }
}
