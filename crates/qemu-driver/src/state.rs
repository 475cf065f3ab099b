//! The VM lifecycle as an enum, driven by QMP events, `query-status` and QEMU's exit.

use std::fmt;

use crate::error::{Error, Result};

/// Where a VM is in its life. QMP events (`STOP`, `RESUME`, `SHUTDOWN`, `GUEST_PANICKED`),
/// `query-status` and QEMU's exit move it along; [`VmState::valid_transition`] says which moves
/// are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    /// QEMU is starting; the guest has not run yet (`prelaunch`).
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused (by `stop`, a migration or snapshot, a debugger …).
    Paused,
    /// A guest disk hit an I/O error (typically the host disk is full) and QEMU paused the guest.
    IoError,
    /// QEMU announced a shutdown (guest powered off, or `quit`); it is about to exit.
    ShuttingDown,
    /// The guest stopped with an internal error of the accelerator (with KVM: "KVM internal
    /// error"). Terminal: the guest cannot continue.
    InternalError,
    /// The guest kernel panicked (pvpanic) or the watchdog fired. Terminal.
    GuestPanicked,
    /// QEMU has exited.
    Exited,
}

impl VmState {
    /// Every state, for tables and tests.
    pub const ALL: [VmState; 8] = [
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::IoError,
        VmState::ShuttingDown,
        VmState::InternalError,
        VmState::GuestPanicked,
        VmState::Exited,
    ];

    /// Maps a QMP `RunState` string (`query-status`'s `status`) to a state. Unknown values (a
    /// newer QEMU) count as [`VmState::Paused`]: the guest is not running and we do not know why.
    pub fn from_run_state(status: &str) -> VmState {
        match status {
            "running" => VmState::Running,
            "prelaunch" => VmState::Starting,
            "io-error" => VmState::IoError,
            "shutdown" => VmState::ShuttingDown,
            "internal-error" => VmState::InternalError,
            "guest-panicked" | "watchdog" => VmState::GuestPanicked,
            // debug, inmigrate, postmigrate, finish-migrate, restore-vm, save-vm, suspended,
            // paused, colo and whatever a later QEMU adds.
            _ => VmState::Paused,
        }
    }

    /// True for states the guest can never leave to run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            VmState::InternalError
                | VmState::GuestPanicked
                | VmState::ShuttingDown
                | VmState::Exited
        )
    }

    /// Checks that the lifecycle may move from `self` to `to`. Staying in a state is allowed
    /// (events repeat, e.g. a `STOP` while paused).
    pub fn valid_transition(self, to: VmState) -> Result<()> {
        use VmState::*;
        let ok = self == to
            || to == Exited
            || match self {
                Starting | Running | Paused | IoError => {
                    matches!(
                        to,
                        Running | Paused | IoError | ShuttingDown | InternalError | GuestPanicked
                    )
                }
                // QEMU's panic action may still power a panicked guest off.
                GuestPanicked => to == ShuttingDown,
                ShuttingDown | InternalError | Exited => false,
            };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidTransition { from: self, to })
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::IoError => "io-error (is the host disk full?)",
            VmState::ShuttingDown => "shutting down",
            VmState::InternalError => "internal-error",
            VmState::GuestPanicked => "guest-panicked",
            VmState::Exited => "exited",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::VmState::{self, *};

    /// Every pair, written out: (from, to, allowed).
    #[test]
    fn transition_table() {
        let allowed_from = |from: VmState| -> &'static [VmState] {
            match from {
                Starting => &[
                    Starting,
                    Running,
                    Paused,
                    IoError,
                    ShuttingDown,
                    InternalError,
                    GuestPanicked,
                    Exited,
                ],
                Running | Paused | IoError => &[
                    Running,
                    Paused,
                    IoError,
                    ShuttingDown,
                    InternalError,
                    GuestPanicked,
                    Exited,
                ],
                ShuttingDown => &[ShuttingDown, Exited],
                InternalError => &[InternalError, Exited],
                GuestPanicked => &[GuestPanicked, ShuttingDown, Exited],
                Exited => &[Exited],
            }
        };
        for from in VmState::ALL {
            for to in VmState::ALL {
                let expected = allowed_from(from).contains(&to);
                assert_eq!(
                    from.valid_transition(to).is_ok(),
                    expected,
                    "{from:?} -> {to:?}"
                );
            }
        }
        // Nothing leaves Exited, nothing goes back to Starting.
        assert!(Running.valid_transition(Starting).is_err());
        assert!(Exited.valid_transition(Running).is_err());
    }

    #[test]
    fn run_states_map_loosely() {
        assert_eq!(VmState::from_run_state("running"), Running);
        assert_eq!(VmState::from_run_state("prelaunch"), Starting);
        assert_eq!(VmState::from_run_state("internal-error"), InternalError);
        assert_eq!(VmState::from_run_state("guest-panicked"), GuestPanicked);
        assert_eq!(VmState::from_run_state("io-error"), IoError);
        assert_eq!(VmState::from_run_state("shutdown"), ShuttingDown);
        assert_eq!(VmState::from_run_state("paused"), Paused);
        assert_eq!(VmState::from_run_state("some-future-state"), Paused);
    }

    #[test]
    fn terminal_states() {
        let terminal: Vec<_> = VmState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [ShuttingDown, InternalError, GuestPanicked, Exited]
        );
    }
}
