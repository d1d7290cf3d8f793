//! Every fault kind chaos-agent ships, in one [`Registry`].
//!
//! The agent runs these kinds and the control plane validates experiments against the same
//! list, so an experiment the server accepts is one the agent can run. Adding a fault crate
//! means one line here.

#![deny(missing_docs)]

use fault_core::Registry;

/// A registry holding every shipped fault kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    fault_process::register(&mut r);
    fault_disk::register(&mut r);
    fault_network::register(&mut r);
    fault_cpu::register(&mut r);
    fault_memory::register(&mut r);
    fault_time::register(&mut r);
    fault_dns::register(&mut r);
    r
}
