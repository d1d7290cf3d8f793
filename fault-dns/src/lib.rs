//! # fault-dns
//!
//! DNS faults for chaos-agent, for programs that use the system resolver (glibc or musl
//! `getaddrinfo`, nsswitch `hosts: files dns`):
//!
//! - [`DnsSpoof`] (`dns.spoof`): host names resolve to given addresses.
//! - [`DnsError`] (`dns.error`): host names (exact, or `*.suffix`) fail to resolve
//!   (NXDOMAIN; `getaddrinfo` returns `EAI_NONAME`).
//!
//! ## What changes on the host
//!
//! `dns.spoof` inserts one line per address at the top of `/etc/hosts` (the files source
//! is asked first and its first match wins), each ending with the tag
//! `# chaos-agent <fault id>`, and disables the lines that name only the spoofed names
//! (Debian's `multi on` in host.conf would otherwise return their addresses too).
//!
//! `dns.error` starts a UDP DNS responder thread in the agent, bound to a loopback address
//! derived from the fault id (`127.x.y.z:53`, x in 100..=249, the next one when taken). It
//! answers NXDOMAIN for matching names (and for them with a resolv.conf search domain
//! appended) and REFUSED for everything else. A tagged
//! `nameserver 127.x.y.z # chaos-agent <fault id>` line goes before the existing nameservers
//! of `/etc/resolv.conf` (glibc and musl stop reading a nameserver line at the first blank,
//! so the tag is ignored). glibc moves on to the next nameserver on REFUSED and on
//! ECONNREFUSED, so other names resolve through the original servers, and if the agent dies
//! (responder gone) the fault degrades to no fault rather than breaking all DNS.
//! `options rotate` is disabled (a tagged copy of the line without it is inserted), and
//! `/etc/hosts` lines that name only matching names are disabled; a line mixing matching
//! and other names is refused at plan, naming it.
//!
//! ## The edits
//!
//! Both files are edited line by line, reversibly per fault id (see `lines.rs`): inserted
//! lines carry the trailing tag, disabled lines get the prefix `#chaos-agent <id># `.
//! Revert removes exactly the lines whose trailing tag is the fault id (also when another
//! fault prefixed them) and strips exactly its prefixes, so lines a person adds during the
//! fault survive, and overlapping DNS faults revert in any order, leaving the file byte
//! for byte as before. A file is never rewritten from a saved copy: each edit writes a
//! temporary file in the same directory, `fsync`s it, renames it over the file and
//! `fsync`s the directory, keeping the mode and owner.
//!
//! A symlinked file (systemd-resolved's `/etc/resolv.conf` -> stub) is replaced by a regular
//! file with the link target's content plus the edit and a tagged marker line naming the
//! target; the receipt records target and content. Revert puts the same symlink back when
//! what is left equals what the target held; if a person edited the file meanwhile, revert
//! removes the fault's lines, leaves the regular file and fails (needs manual; the manual
//! undo has the `ln -sfn` command). With overlapping faults, the first to revert hands the
//! duty to a remaining one through the marker line.
//!
//! Receipts record the mount namespace; revert and verify act there. Revert works from the
//! receipt alone after a crash or a reboot (the responder is gone then; the resolver falls
//! back to the original servers until the line is removed).
//!
//! ## Limits
//!
//! nscd (and programs with their own resolver or cache) may not see the change
//! (availability says degraded when nscd runs). glibc reads at most 3 nameservers
//! (`MAXNS`), so with 3 already listed the third is not asked during a `dns.error`. musl
//! asks all nameservers in parallel and takes the first NXDOMAIN or answer (it ignores
//! REFUSED), so the fault holds there only while the local responder answers first (it
//! normally does). systemd-resolved's nss-resolve (`hosts: resolve` before `dns`) bypasses
//! resolv.conf (availability says degraded).
//!
//! ## Privileges
//!
//! Root: writing `/etc`, binding port 53. Reverting from another mount namespace needs
//! `CAP_SYS_ADMIN`.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod edit;
mod error;
mod files;
mod lines;
mod names;
mod responder;
mod spoof;

pub use edit::{HOSTS, RESOLV};
pub use error::{DnsError, DnsErrorReceipt, DnsErrorSpec, ERROR_KIND};
pub use files::Symlink;
pub use spoof::{DnsSpoof, DnsSpoofReceipt, DnsSpoofSpec, SPOOF_KIND};

/// Register every kind of this crate.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<DnsSpoof>();
    reg.register::<DnsError>();
}
