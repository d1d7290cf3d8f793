//! A small blocking netlink client over a raw `AF_NETLINK` socket (libc only), plus the
//! message builder and attribute parser the encoders use.
//!
//! Why not rtnetlink: it needs an async runtime and does not model the qdisc kind nor the
//! netem/tbf/htb options, and no crate offers nf_tables without C libraries. Netlink is a
//! simple framing (16-byte header, 4-byte aligned type-length-value attributes), so the
//! whole client is this file.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NLM_F_REQUEST`.
pub(crate) const F_REQUEST: u16 = 0x001;
/// `NLM_F_ACK`.
pub(crate) const F_ACK: u16 = 0x004;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const F_DUMP: u16 = 0x300;
/// `NLM_F_REPLACE`.
pub(crate) const F_REPLACE: u16 = 0x100;
/// `NLM_F_EXCL`.
pub(crate) const F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub(crate) const F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub(crate) const F_APPEND: u16 = 0x800;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NLA_F_NESTED`, set by nf_tables users on nested attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

/// A netlink request the kernel refused, with its errno and extended-ack message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NlError {
    /// Positive errno.
    pub(crate) errno: i32,
    /// The kernel's extended ack message, when it sent one.
    pub(crate) extack: Option<String>,
}

impl NlError {
    pub(crate) fn io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
    /// Turn into a crate error naming the operation.
    pub(crate) fn into_error(self, op: impl std::fmt::Display) -> fault_core::Error {
        let msg = match &self.extack {
            Some(m) => format!("{op}: kernel says \"{m}\""),
            None => op.to_string(),
        };
        fault_core::Error::io(msg, self.io())
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> NlError {
        NlError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            extack: None,
        }
    }
}

/// Builds one netlink message: header, fixed family header, attributes.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    /// A message of `ty` with `flags`; sequence and port id are left 0 (set when sent).
    pub(crate) fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Msg { buf }
    }
    /// Append raw bytes (a family header), padded to 4.
    pub(crate) fn raw(&mut self, data: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }
    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
    /// Append an attribute.
    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }
    /// A NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }
    /// A host-order u32 attribute.
    pub(crate) fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }
    /// A network-order u32 attribute (nf_tables).
    pub(crate) fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_be_bytes())
    }
    /// Open a nested attribute; close it with [`Msg::end_nest`].
    pub(crate) fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        at
    }
    /// Close a nested attribute opened at `at`.
    pub(crate) fn end_nest(&mut self, at: usize) -> &mut Msg {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
    /// The finished bytes (length filled in).
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// The header fields of a received message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) len: usize,
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
}

/// Parse the netlink header at the start of `b`.
pub(crate) fn header(b: &[u8]) -> Option<Header> {
    if b.len() < 16 {
        return None;
    }
    let len = u32::from_ne_bytes(b[0..4].try_into().ok()?) as usize;
    if len < 16 || len > b.len() {
        return None;
    }
    Some(Header {
        len,
        ty: u16::from_ne_bytes([b[4], b[5]]),
        flags: u16::from_ne_bytes([b[6], b[7]]),
        seq: u32::from_ne_bytes(b[8..12].try_into().ok()?),
    })
}

/// Split a buffer holding several messages into messages.
pub(crate) fn split_messages(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(h) = header(b) {
        out.push(&b[..h.len]);
        let next = (h.len + 3) & !3;
        if next >= b.len() {
            break;
        }
        b = &b[next..];
    }
    out
}

/// Iterate the attributes in `b` as `(type without flags, payload)`.
pub(crate) fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        if next >= b.len() {
            break;
        }
        b = &b[next..];
    }
    out
}

/// The first attribute of type `ty`.
pub(crate) fn find_attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).into_iter().find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// A NUL-terminated string payload.
pub(crate) fn attr_string(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A blocking netlink socket of one protocol.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
}

/// `NETLINK_ROUTE`.
pub(crate) const NETLINK_ROUTE: libc::c_int = 0;
/// `NETLINK_NETFILTER`.
pub(crate) const NETLINK_NETFILTER: libc::c_int = 12;

impl Socket {
    /// Open and bind a socket of `proto` in the calling thread's network namespace.
    pub(crate) fn open(proto: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: valid pointer and length for an int option. Failure only loses extack.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_EXT_ACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: zeroed sockaddr_nl is valid; we set the family.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl for the duration of the call.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Socket { fd, seq: seed })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl (pid 0 = kernel) is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buf and sa are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receive one datagram; `Ok(None)` when `nonblock` and nothing is queued.
    fn recv(&self, nonblock: bool) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let flags = if nonblock { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if nonblock => return Ok(None),
                    _ => return Err(e),
                }
            }
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
    }

    /// Send one request with `NLM_F_ACK` and wait for its acknowledgement.
    pub(crate) fn request(&mut self, msg: Vec<u8>) -> Result<(), NlError> {
        let seq = self.stamp_one(msg);
        self.send(&seq.1)?;
        loop {
            let Some(buf) = self.recv(false)? else {
                continue;
            };
            for m in split_messages(&buf) {
                let Some(h) = header(m) else { continue };
                if h.seq != seq.0 {
                    continue;
                }
                if h.ty == NLMSG_ERROR {
                    return match parse_error(m) {
                        None | Some(Ok(())) => Ok(()),
                        Some(Err(e)) => Err(e),
                    };
                }
            }
        }
    }

    fn stamp_one(&mut self, mut msg: Vec<u8>) -> (u32, Vec<u8>) {
        let seq = self.next_seq();
        let flags = u16::from_ne_bytes([msg[6], msg[7]]) | F_ACK;
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        (seq, msg)
    }

    /// Send a dump request and collect every answer message (header included).
    pub(crate) fn dump(&mut self, mut msg: Vec<u8>) -> Result<Vec<Vec<u8>>, NlError> {
        let seq = self.next_seq();
        let flags = u16::from_ne_bytes([msg[6], msg[7]]) | F_DUMP;
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.send(&msg)?;
        let mut out = Vec::new();
        loop {
            let Some(buf) = self.recv(false)? else {
                continue;
            };
            for m in split_messages(&buf) {
                let Some(h) = header(m) else { continue };
                if h.seq != seq {
                    continue;
                }
                match h.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        return match parse_error(m) {
                            None | Some(Ok(())) => Ok(out),
                            Some(Err(e)) => Err(e),
                        }
                    }
                    _ => out.push(m.to_vec()),
                }
            }
        }
    }

    /// Send an nf_tables batch (`msgs` between BATCH_BEGIN and BATCH_END) in one datagram
    /// and collect the acks. nfnetlink processes a batch synchronously inside `sendmsg`, so
    /// every answer is queued when the send returns. The batch is all or nothing.
    pub(crate) fn batch(
        &mut self,
        begin: Vec<u8>,
        msgs: Vec<Vec<u8>>,
        end: Vec<u8>,
    ) -> Result<(), NlError> {
        let mut buf = Vec::new();
        let mut stamp = |m: Vec<u8>, ack: bool, s: &mut Socket| {
            let mut m = m;
            let seq = s.next_seq();
            if ack {
                let flags = u16::from_ne_bytes([m[6], m[7]]) | F_ACK;
                m[6..8].copy_from_slice(&flags.to_ne_bytes());
            }
            m[8..12].copy_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&m);
            seq
        };
        stamp(begin, false, self);
        let mut seqs = Vec::new();
        for m in msgs {
            seqs.push(stamp(m, true, self));
        }
        stamp(end, false, self);
        self.send(&buf)?;
        let mut acked = 0usize;
        let mut first_err: Option<NlError> = None;
        while acked < seqs.len() {
            let Some(resp) = self.recv(first_err.is_some() || acked > 0)? else {
                break;
            };
            for m in split_messages(&resp) {
                let Some(h) = header(m) else { continue };
                if h.ty != NLMSG_ERROR || !seqs.contains(&h.seq) {
                    continue;
                }
                match parse_error(m) {
                    Some(Err(e)) => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                    _ => acked += 1,
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None if acked == seqs.len() => Ok(()),
            None => Err(NlError {
                errno: libc::EIO,
                extack: Some("nf_tables batch was not fully acknowledged".into()),
            }),
        }
    }
}

/// Decode an `NLMSG_ERROR` message: `Ok(())` for an ack, the errno and extack otherwise.
pub(crate) fn parse_error(m: &[u8]) -> Option<Result<(), NlError>> {
    let h = header(m)?;
    if m.len() < 20 {
        return None;
    }
    let err = i32::from_ne_bytes(m[16..20].try_into().ok()?);
    if err == 0 {
        return Some(Ok(()));
    }
    let mut extack = None;
    if h.flags & NLM_F_ACK_TLVS != 0 && m.len() >= 36 {
        // The echoed request: its header only when NLM_F_CAPPED (0x100), else whole.
        let inner_len = u32::from_ne_bytes(m[20..24].try_into().ok()?) as usize;
        let capped = h.flags & 0x100 != 0;
        let skip = if capped { 16 } else { (inner_len + 3) & !3 };
        if 20 + skip <= m.len() {
            if let Some(v) = find_attr(&m[20 + skip..], NLMSGERR_ATTR_MSG) {
                extack = Some(attr_string(v));
            }
        }
    }
    Some(Err(NlError {
        errno: -err,
        extack,
    }))
}

/// Encode bytes as lower-case hex (receipts keep raw kernel options this way).
pub(crate) fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decode lower-case or upper-case hex.
pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_pads_and_nests() {
        let mut m = Msg::new(36, F_REQUEST);
        m.raw(&[1, 2, 3]);
        let n = m.begin_nest(2);
        m.attr(1, &[9]);
        m.end_nest(n);
        let b = m.finish();
        assert_eq!(b.len(), 16 + 4 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 32);
        let a = attrs(&b[20..]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 2);
        assert_eq!(attrs(a[0].1), vec![(1u16, &[9u8][..])]);
    }

    #[test]
    fn error_with_extack_is_decoded() {
        // NLMSG_ERROR, flags ACK_TLVS|CAPPED, errno -2, echoed header, then attr MSG.
        let mut m = Msg::new(NLMSG_ERROR, NLM_F_ACK_TLVS | 0x100);
        m.raw(&(-2i32).to_ne_bytes());
        m.raw(&Msg::new(36, F_REQUEST).finish());
        m.attr_str(NLMSGERR_ATTR_MSG, "Specified qdisc kind is unknown");
        let b = m.finish();
        let e = parse_error(&b).unwrap().unwrap_err();
        assert_eq!(e.errno, 2);
        assert_eq!(e.extack.as_deref(), Some("Specified qdisc kind is unknown"));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            from_hex(&to_hex(&[0, 0xab, 0x10])).unwrap(),
            vec![0, 0xab, 0x10]
        );
        assert!(from_hex("abc").is_none());
    }
}
