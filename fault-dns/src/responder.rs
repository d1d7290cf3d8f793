//! The tiny UDP DNS responder behind `dns.error`: one thread in the agent, on a loopback
//! address of its own, answering NXDOMAIN for the fault's names and REFUSED for every other
//! query (so the resolver asks the next nameserver). Kept in a process-global registry by
//! fault id, so `revert`, an associated function of the receipt, can stop it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fault_core::{Error, ErrorKind, Result};

use crate::names::Pattern;

/// NXDOMAIN and REFUSED (RFC 1035 §4.1.1).
pub(crate) const NXDOMAIN: u8 = 3;
pub(crate) const REFUSED: u8 = 5;

/// How many loopback addresses are tried after the derived one is taken.
const TRIES: u32 = 64;

/// How often the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

struct Running {
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn registry() -> &'static Mutex<HashMap<String, Running>> {
    static R: std::sync::OnceLock<Mutex<HashMap<String, Running>>> = std::sync::OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The first loopback address tried for a fault id: `127.x.y.z` with `x` in 100..=249 (so
/// never 127.0.0.1, 127.0.0.53 or 127.0.1.1), from an FNV-1a hash of the id.
pub(crate) fn derived(id: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    nth(h, 0)
}

fn nth(h: u32, i: u32) -> Ipv4Addr {
    let h = h.wrapping_add(i.wrapping_mul(0x9e37_79b9));
    Ipv4Addr::new(
        127,
        100 + (h % 150) as u8,
        (h >> 8) as u8,
        1 + ((h >> 16) % 254) as u8,
    )
}

/// Whether a loopback address is one this kind would use (for `check_receipt`).
pub(crate) fn is_ours(addr: Ipv4Addr) -> bool {
    let o = addr.octets();
    o[0] == 127 && (100..=249).contains(&o[1]) && o[3] != 0 && o[3] != 255
}

/// The address the responder of `id` answers on, when it runs in this process.
pub(crate) fn running(id: &str) -> Option<Ipv4Addr> {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.get(id)
        .filter(|x| !x.thread.is_finished())
        .map(|x| x.addr)
}

/// Start the responder of `id` (or return the address of the one running), binding the
/// derived address or, when that is taken, one of the next ones.
pub(crate) fn start(id: &str, patterns: Vec<Pattern>, search: Vec<String>) -> Result<Ipv4Addr> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = reg.get(id) {
        if !r.thread.is_finished() {
            return Ok(r.addr);
        }
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut last = None;
    let mut sock = None;
    for i in 0..TRIES {
        let addr = nth(h, i);
        match UdpSocket::bind(SocketAddrV4::new(addr, 53)) {
            Ok(s) => {
                sock = Some((s, addr));
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => last = Some(e),
            Err(e) => {
                return Err(Error::io(
                    format!("binding the DNS responder to {addr}:53 (needs CAP_NET_BIND_SERVICE and an up loopback interface)"),
                    e,
                ))
            }
        }
    }
    let Some((sock, addr)) = sock else {
        return Err(Error::io(
            format!("binding the DNS responder: {TRIES} loopback addresses tried, all in use"),
            last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EADDRINUSE)),
        ));
    };
    sock.set_read_timeout(Some(POLL))
        .map_err(|e| Error::io("setting the responder's read timeout", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("dns-{}", &id[..id.len().min(10)]))
        .spawn(move || serve(sock, &patterns, &search, &flag))
        .map_err(|e| Error::io("starting the DNS responder thread", e))?;
    reg.insert(id.to_string(), Running { addr, stop, thread });
    Ok(addr)
}

/// Stop the responder of `id`, if this process runs one. Returns whether one ran.
pub(crate) fn stop(id: &str) -> bool {
    let r = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
    match r {
        Some(r) => {
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.thread.join();
            true
        }
        None => false,
    }
}

fn serve(sock: UdpSocket, patterns: &[Pattern], search: &[String], stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout (to look at the flag), or a transient error
        };
        if let Some(reply) = answer(&buf[..n], patterns, search) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

/// The question of a DNS query: the name (lower case, no trailing dot) and where the
/// question section ends. `None` for what is not a standard query with one question.
pub(crate) fn question(msg: &[u8]) -> Option<(String, usize)> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None; // short, or a response
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    if qd != 1 {
        return None;
    }
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 || name.len() + len > 254 {
            return None; // compression pointers never appear in a query's question
        }
        let label = msg.get(i..i + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let end = i + 4; // QTYPE, QCLASS
    (end <= msg.len()).then_some((name, end))
}

/// The rcode this responder answers a name with.
pub(crate) fn rcode_for(name: &str, patterns: &[Pattern], search: &[String]) -> u8 {
    let hit = |n: &str| patterns.iter().any(|p| p.matches(n));
    if hit(name) {
        return NXDOMAIN;
    }
    // The resolver also tries `name.<search domain>`: fail those too.
    for s in search {
        if let Some(base) = name
            .strip_suffix(s.as_str())
            .and_then(|b| b.strip_suffix('.'))
        {
            if hit(base) {
                return NXDOMAIN;
            }
        }
    }
    REFUSED
}

/// The reply to a query: its id and question echoed, QR and RA set, RD copied, no answer.
pub(crate) fn answer(msg: &[u8], patterns: &[Pattern], search: &[String]) -> Option<Vec<u8>> {
    let (name, end) = question(msg)?;
    let rcode = rcode_for(&name, patterns, search);
    let mut r = Vec::with_capacity(end);
    r.extend_from_slice(&msg[..2]);
    let aa = if rcode == NXDOMAIN { 0x04 } else { 0 };
    r.push(0x80 | (msg[2] & 0x79) | aa); // QR, opcode and RD kept, AA for our NXDOMAIN
    r.push(0x80 | rcode); // RA, rcode
    r.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    r.extend_from_slice(&msg[12..end]);
    Some(r)
}

/// A standard query for `name` (type A), with id `id`.
pub(crate) fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Ask the responder at `addr` about `name`: its rcode, or why there was none.
pub(crate) fn ask(addr: Ipv4Addr, name: &str) -> Result<u8> {
    let fail = |e: std::io::Error| Error::io(format!("asking the DNS responder at {addr}:53"), e);
    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(fail)?;
    let id = 0x5a5a;
    s.send_to(
        &query(id, name),
        SocketAddr::V4(SocketAddrV4::new(addr, 53)),
    )
    .map_err(fail)?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).map_err(fail)?;
    if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
        return Err(Error::new(
            ErrorKind::Io,
            format!("the DNS responder at {addr}:53 sent a malformed reply"),
        ));
    }
    Ok(buf[3] & 0x0f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<Pattern> {
        p.iter().map(|s| Pattern::parse(s, true).unwrap()).collect()
    }

    #[test]
    fn derived_addresses_avoid_the_usual_loopback_ones() {
        for i in 0..5000u32 {
            let a = derived(&format!("f{i}"));
            assert!(is_ours(a), "{a}");
            assert!(![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 53),
                Ipv4Addr::new(127, 0, 1, 1)
            ]
            .contains(&a));
            for j in 0..TRIES {
                assert!(is_ours(nth(i, j)));
            }
        }
        assert_eq!(derived("x"), derived("x"));
    }

    #[test]
    fn queries_are_answered_by_name() {
        let p = pats(&["api.example.com", "*.corp.test"]);
        let search = vec!["svc.local".to_string()];
        for (name, want) in [
            ("api.example.com", NXDOMAIN),
            ("API.Example.COM", NXDOMAIN),
            ("www.example.com", REFUSED),
            ("a.corp.test", NXDOMAIN),
            ("a.b.corp.test", NXDOMAIN),
            ("corp.test", REFUSED),
            ("api.example.com.svc.local", NXDOMAIN),
            ("other.svc.local", REFUSED),
        ] {
            let q = query(7, name);
            let r = answer(&q, &p, &search).unwrap();
            assert_eq!(&r[..2], &[0, 7]);
            assert_eq!(r[2] & 0x80, 0x80, "QR");
            assert_eq!(r[2] & 0x01, 0x01, "RD copied");
            assert_eq!(r[3] & 0x0f, want, "{name}");
            assert_eq!(&r[12..], &q[12..], "question echoed");
        }
        // Not a query: no reply.
        let mut resp = query(1, "a.corp.test");
        resp[2] |= 0x80;
        assert!(answer(&resp, &p, &search).is_none());
        assert!(answer(&[0; 5], &p, &search).is_none());
        let mut cut = query(1, "a.corp.test");
        cut.truncate(cut.len() - 2);
        assert!(answer(&cut, &p, &search).is_none());
    }
}
