//! The real relays in two network namespaces, linked through slots of an
//! ivshmem server's memory instead of a shm file + rendezvous. The CPU relay
//! is the host peer (`ivshmem:<socket>@k/n`, creator); the DPU relay stands in
//! for the guest as a second ivshmem peer on the same slot (`--side dpu` with
//! the same address: eventfd doorbells on vectors 2k, 2k+1 instead of BAR0).

mod relay_common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use relay_common::ivshmem::IvshmemServer;
use relay_common::transfer::{checksum_client, checksum_of, checksum_server, transfer};
use relay_common::*;

const MIB: usize = 1024 * 1024;
const SLOTS: u32 = 8;

fn slot_pod(srv: &IvshmemServer, k: u32) -> Pod {
    let r = srv.region(k, SLOTS);
    Pod::with(PodOptions {
        regions: Some((r.clone(), r)),
        ..Default::default()
    })
}

/// Garbage over the rings of slot `k` (see `faults::scribble`).
fn scribble_slot(srv: &IvshmemServer, k: u32) {
    let (start, len) = srv.window(k, SLOTS);
    faults::scribble(&srv.shm, start, len);
}

/// A connection from `ns` that echoes through `addr` until it fails; its error.
fn echo_until_error(ns: &std::path::Path, addr: SocketAddr) -> std::thread::JoinHandle<ErrorKind> {
    faults::echo_until_error(in_ns(ns, move || TcpStream::connect(addr).unwrap()))
}

#[test]
fn ivshmem_slot_transfer_of_32_mib_each_way_is_byte_exact() {
    let srv = IvshmemServer::start(SLOTS, 64 << 20);
    let pod = slot_pod(&srv, 3);
    transfer(&pod, "127.0.0.1:18310".parse().unwrap(), 32 * MIB);
    let logs = pod.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
    // Really through the slot: the creator accepted a slot opener, no rendezvous.
    assert!(
        logs.contains("slot opener attached") && logs.contains("slot attached"),
        "{logs}"
    );
}

#[test]
fn ivshmem_slot_relays_1000_concurrent_connections() {
    let srv = IvshmemServer::start(SLOTS, 64 << 20);
    let pod = slot_pod(&srv, 5);
    let addr: SocketAddr = "127.0.0.1:18311".parse().unwrap();
    let ok = concurrent_echoes(&pod.dpu_path(), &pod.cpu_path(), addr, 1000);
    assert_eq!(ok, 1000, "{}", pod.logs());
}

#[test]
fn garbage_in_an_ivshmem_slot_ends_streams_but_relays_stay_up() {
    let srv = IvshmemServer::start(SLOTS, 64 << 20);
    let mut pod = slot_pod(&srv, 2);
    let addr: SocketAddr = "127.0.0.1:18312".parse().unwrap();
    echo_server(&pod.dpu_path(), "127.0.0.1:18312");
    wait_echo(&pod.cpu_path(), addr);
    let client = echo_until_error(&pod.cpu_path(), addr);
    std::thread::sleep(Duration::from_millis(100));
    scribble_slot(&srv, 2);
    // The pair re-attaches (new generation) and new connections work.
    assert_survived_garbage(&mut pod, client, addr);
}

#[test]
fn killed_relay_over_ivshmem_resets_streams_and_the_pair_recovers() {
    let srv = IvshmemServer::start(SLOTS, 64 << 20);
    let mut pod = slot_pod(&srv, 7);
    let addr: SocketAddr = "127.0.0.1:18313".parse().unwrap();
    echo_server(&pod.dpu_path(), "127.0.0.1:18313");
    wait_echo(&pod.cpu_path(), addr);

    // The DPU relay dies (no detach written): the CPU side notices the
    // heartbeat stop, resets the stream and drops the mirror.
    let client = echo_until_error(&pod.cpu_path(), addr);
    pod.dpu.kill9();
    assert_eq!(
        client.join().unwrap(),
        ErrorKind::ConnectionReset,
        "{}",
        pod.logs()
    );
    eventually(20, "mirror to go", || {
        (try_echo(&pod.cpu_path(), addr) == Err(ErrorKind::ConnectionRefused)).then_some(())
    });
    pod.dpu.start();
    wait_echo(&pod.cpu_path(), addr);

    // The CPU relay (the creator) dies; a new one takes over the slot.
    let client = echo_until_error(&pod.cpu_path(), addr);
    pod.cpu.kill9();
    assert_ne!(
        client.join().unwrap(),
        ErrorKind::TimedOut,
        "{}",
        pod.logs()
    );
    pod.cpu.start();
    wait_echo(&pod.cpu_path(), addr);
    // And the other way round: a DPU-side client through the restarted pair.
    echo_server(&pod.cpu_path(), "127.0.0.1:18314");
    wait_echo(&pod.dpu_path(), "127.0.0.1:18314".parse().unwrap());
    assert!(pod.cpu.alive() && pod.dpu.alive());
}

#[test]
fn two_ivshmem_slots_side_by_side_do_not_interfere() {
    let srv = IvshmemServer::start(SLOTS, 64 << 20);
    let a = slot_pod(&srv, 0);
    let mut b = slot_pod(&srv, 1);
    let addr_a: SocketAddr = "127.0.0.1:18315".parse().unwrap();
    let addr_b: SocketAddr = "127.0.0.1:18316".parse().unwrap();
    echo_server(&b.dpu_path(), "127.0.0.1:18316");
    wait_echo(&b.cpu_path(), addr_b);

    // Slot 0 moves 16 MiB each way while slot 1 is scribbled over.
    let rx = checksum_server(&a.dpu_path(), addr_a, 16 * MIB, 4);
    wait_mirror(&a.cpu_path(), addr_a);
    let b_client = echo_until_error(&b.cpu_path(), addr_b);
    let a_ns = a.cpu_path();
    let a_client = std::thread::spawn(move || checksum_client(&a_ns, addr_a, 16 * MIB, 3));
    scribble_slot(&srv, 1);
    assert_ne!(
        b_client.join().unwrap(),
        ErrorKind::TimedOut,
        "{}",
        b.logs()
    );
    let (sent_h, got, got_h) = a_client.join().unwrap();
    let (srv_total, srv_h) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!((srv_total, srv_h), (16 * MIB, sent_h), "{}", a.logs());
    assert_eq!(
        (got, got_h),
        (16 * MIB, checksum_of(16 * MIB, 4)),
        "{}",
        a.logs()
    );
    assert!(
        !a.logs().contains("ERROR"),
        "slot 0 saw slot 1's garbage:\n{}",
        a.logs()
    );
    assert!(b.cpu.alive() && b.dpu.alive(), "{}", b.logs());
    wait_echo(&b.cpu_path(), addr_b);
}
