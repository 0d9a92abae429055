//! Byte-exact transfers, half-close, reset and many connections through the relays.

mod relay_common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use relay_common::*;

const MIB: usize = 1024 * 1024;

#[test]
fn transfer_of_64_mib_each_way_is_byte_exact() {
    let pod = Pod::new();
    transfer::transfer(&pod, "127.0.0.1:18090".parse().unwrap(), 64 * MIB);
}

#[test]
fn half_close_propagates_both_ways() {
    let pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18091".parse().unwrap();
    in_ns(&pod.cpu_path(), move || {
        let l = TcpListener::bind(addr).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                // Read to EOF (the client's FIN), then answer and close.
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                c.write_all(format!("got {} bytes", got.len()).as_bytes())
                    .unwrap();
            }
        });
    });
    wait_mirror(&pod.dpu_path(), addr);
    let reply = in_ns(&pod.dpu_path(), move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&[9u8; 1000]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    });
    assert_eq!(reply, "got 1000 bytes");
}

#[test]
fn client_reset_reaches_server_and_server_reset_reaches_client() {
    let pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18092".parse().unwrap();
    let (tx, rx) = mpsc::channel();
    in_ns(&pod.dpu_path(), move || {
        let l = TcpListener::bind(addr).unwrap();
        std::thread::spawn(move || {
            // First connection: the client resets; report what the server saw.
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            let r = c.read(&mut b).map_err(|e| e.kind());
            tx.send(r).unwrap();
            // Second connection: the server resets.
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            reset(c);
        });
    });
    wait_mirror(&pod.cpu_path(), addr);
    in_ns(&pod.cpu_path(), move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"ping").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        reset(c);
    });
    let seen = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(seen, Err(ErrorKind::ConnectionReset), "{}", pod.logs());
    let kind = in_ns(&pod.cpu_path(), move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read(&mut b).map_err(|e| e.kind())
    });
    assert_eq!(kind, Err(ErrorKind::ConnectionReset), "{}", pod.logs());
}

#[test]
fn thousand_concurrent_connections_all_echo() {
    let pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18093".parse().unwrap();
    let ok = concurrent_echoes(&pod.dpu_path(), &pod.cpu_path(), addr, 1000);
    assert_eq!(ok, 1000, "{}", pod.logs());
}
