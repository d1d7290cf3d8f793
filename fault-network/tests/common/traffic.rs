//! Simple real-traffic measurements: a TCP bulk transfer and a UDP datagram counter.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::netns::{in_ns, spawn_in};

/// Bits per second received by a TCP receiver in `ns_rx` listening on `dst:port` from a
/// sender in `ns_tx`, measured at the receiver over `window` after a warm-up.
pub fn tcp_throughput(ns_tx: &str, ns_rx: &str, dst: Ipv4Addr, port: u16, window: Duration) -> f64 {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx = spawn_in(ns_rx, move || {
        let l = TcpListener::bind((dst, port)).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let warm = Duration::from_millis(700);
        let mut start: Option<Instant> = None;
        let mut counted = 0u64;
        let mut t0 = None;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let first = *start.get_or_insert(now);
            let el = now - first;
            if el >= warm {
                let t = *t0.get_or_insert(now);
                if now - t >= window {
                    return counted as f64 * 8.0 / (now - t).as_secs_f64();
                }
                counted += n as u64;
            }
        }
        panic!("transfer ended before the measurement window");
    });
    ready_rx.recv().unwrap();
    in_ns(ns_tx, move || {
        let mut s = TcpStream::connect(SocketAddr::from((dst, port))).expect("connect");
        let buf = vec![0x5au8; 1 << 16];
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    rx.join().expect("receiver")
}

/// Send `n` UDP datagrams from `ns_tx` to `dst:port` (received in `ns_rx`); return how many
/// arrived.
pub fn udp_delivered(ns_tx: &str, ns_rx: &str, dst: Ipv4Addr, port: u16, n: usize) -> usize {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx = spawn_in(ns_rx, move || {
        let s = UdpSocket::bind((dst, port)).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while s.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    ready_rx.recv().unwrap();
    in_ns(ns_tx, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        // Resolve the neighbour first, so ARP's small pending queue drops nothing.
        let _ = s.send_to(b"warm-up", (dst, 9));
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..n {
            let _ = s.send_to(&(i as u64).to_be_bytes(), (dst, port));
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    rx.join().expect("udp receiver")
}
