//! The server and host peers over a real Unix socket.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{readable, TestServer, WAIT};
use heteropod_ivshmem::{Client, Error, PeerEvent, PeerInfo, Server, ServerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_get_distinct_ids_and_share_memory() {
    let srv = TestServer::start(2, 1 << 20);
    let a = Client::connect(&srv.socket, 2).await.unwrap();
    let b = Client::connect(&srv.socket, 2).await.unwrap();
    assert_eq!(a.id(), 0, "the first peer gets id 0");
    assert_ne!(a.id(), b.id());
    assert_eq!(a.shm().len(), 1 << 20);
    a.shm().write(4096, b"hello from a").unwrap();
    let mut buf = [0u8; 12];
    b.shm().read(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"hello from a");
    // The host can also map the server's file: the same bytes.
    let file = std::fs::read(&srv.shm).unwrap();
    assert_eq!(&file[4096..4108], b"hello from a");
    assert!(matches!(
        a.shm().write((1 << 20) - 4, &[0; 8]),
        Err(Error::OutOfBounds { .. })
    ));
    let (ida, idb) = (a.id(), b.id());
    let seen = srv
        .handle
        .wait_until(WAIT, |p| (p.len() == 2).then(|| p.to_vec()))
        .await
        .unwrap();
    assert_eq!(
        seen,
        [
            PeerInfo {
                id: ida,
                vectors: 2
            },
            PeerInfo {
                id: idb,
                vectors: 2
            }
        ]
    );
    // a learned about b after connecting; b got a's eventfds during setup.
    a.wait_until(WAIT, |p| {
        p.iter()
            .any(|i| i.id == idb && i.vectors == 2)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        b.peers(),
        [PeerInfo {
            id: ida,
            vectors: 2
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_a_vector_wakes_only_that_bell() {
    let srv = TestServer::start(2, 4096);
    let a = Client::connect(&srv.socket, 2).await.unwrap();
    let b = Client::connect(&srv.socket, 2).await.unwrap();
    b.ring(a.id(), 1).unwrap();
    assert!(readable(a.bell(1).unwrap(), 1000), "bell 1 not rung");
    assert!(!readable(a.bell(0).unwrap(), 0), "bell 0 rung too");
    assert_eq!(a.drain(1).unwrap(), 1);
    assert!(
        !readable(a.bell(1).unwrap(), 0),
        "drain left the bell readable"
    );
    // And the other way, once a knows b.
    let idb = b.id();
    a.wait_until(WAIT, |p| {
        p.iter()
            .any(|i| i.id == idb && i.vectors == 2)
            .then_some(())
    })
    .await
    .unwrap();
    a.ring(idb, 0).unwrap();
    assert!(readable(b.bell(0).unwrap(), 1000));
    assert!(!readable(b.bell(1).unwrap(), 0));
    assert!(matches!(a.ring(idb, 2), Err(Error::NoVector { .. })));
    assert!(matches!(a.ring(999, 0), Err(Error::NoPeer(999))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_peer_is_announced_and_a_rejoining_one_gets_a_new_id() {
    let srv = TestServer::start(1, 4096);
    let a = Client::connect(&srv.socket, 1).await.unwrap();
    let mut events = a.subscribe();
    let b = Client::connect(&srv.socket, 1).await.unwrap();
    let old = b.id();
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        PeerEvent::Joined(old)
    );
    drop(b);
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        PeerEvent::Left(old)
    );
    assert!(matches!(a.ring(old, 0), Err(Error::NoPeer(_))));
    srv.handle
        .wait_until(WAIT, |p| (p.len() == 1).then_some(()))
        .await
        .unwrap();

    let b = Client::connect(&srv.socket, 1).await.unwrap();
    assert_ne!(b.id(), old, "a rejoining peer gets a new id");
    let new = b.id();
    a.wait_until(WAIT, |p| p.iter().any(|i| i.id == new).then_some(()))
        .await
        .unwrap();
    a.ring(new, 0).unwrap();
    assert!(readable(b.bell(0).unwrap(), 1000));
    b.ring(a.id(), 0).unwrap();
    assert!(readable(a.bell(0).unwrap(), 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_vectors_each_ring_their_own_bell() {
    let srv = TestServer::start(8, 64 << 10);
    let a = Client::connect(&srv.socket, 8).await.unwrap();
    let b = Client::connect(&srv.socket, 8).await.unwrap();
    assert_eq!(a.vectors(), 8);
    for v in 0..8u16 {
        b.ring(a.id(), v).unwrap();
        for w in 0..8u16 {
            let rung = readable(a.bell(w).unwrap(), if w == v { 1000 } else { 0 });
            assert_eq!(rung, w == v, "ringing {v} made bell {w} readable={rung}");
        }
        a.drain(v).unwrap();
    }
    // Duplicated descriptors are the same eventfds.
    let dup = a.bell_fd(3).unwrap();
    let theirs = b.peer_bell_fd(a.id(), 3).unwrap();
    nix::unistd::write(&theirs, &1u64.to_ne_bytes()).unwrap();
    assert!(readable(&dup, 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_socket_and_shm_file() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("heteropod-ivshmem-test-{}", std::process::id());
    let srv = TestServer::start_with(dir, name.clone(), 1, 8192);
    let shm = std::path::Path::new("/dev/shm").join(&name);
    assert_eq!(srv.shm, shm);
    let meta = std::fs::metadata(&shm).unwrap();
    assert_eq!(meta.len(), 8192);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let a = Client::connect(&srv.socket, 1).await.unwrap();
    let mut events = a.subscribe();
    let socket = srv.socket.clone();
    srv.stop().await;
    assert!(!socket.exists(), "socket left behind");
    assert!(!shm.exists(), "shm file left behind");
    assert_eq!(
        tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap(),
        PeerEvent::ServerClosed
    );
    // The memory stays usable for peers already mapped.
    a.shm().write(0, b"still here").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_early_closing_clients_do_not_crash_the_server() {
    let srv = TestServer::start(4, 4096);
    let a = Client::connect(&srv.socket, 4).await.unwrap();
    for i in 0..20 {
        let mut s = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
        match i % 4 {
            0 => drop(s),
            1 => {
                let _ = s.write_all(b"garbage, the protocol is one way");
            }
            2 => {
                // Read only the version, then go.
                let mut b = [0u8; 8];
                std::io::Read::read_exact(&mut s, &mut b).unwrap();
                assert_eq!(b, 0i64.to_le_bytes());
            }
            _ => {
                s.shutdown(std::net::Shutdown::Both).unwrap();
            }
        }
    }
    // Every bad client is gone again; a good one still works.
    srv.handle
        .wait_until(WAIT, |p| (p.len() == 1).then_some(()))
        .await
        .unwrap();
    let b = Client::connect(&srv.socket, 4).await.unwrap();
    b.ring(a.id(), 3).unwrap();
    assert!(readable(a.bell(3).unwrap(), 1000));
    // A client asking for more vectors than the server has times out cleanly.
    let short =
        tokio::time::timeout(Duration::from_secs(10), Client::connect(&srv.socket, 5)).await;
    assert!(matches!(short, Ok(Err(Error::Timeout(_)))), "{short:?}");
    // The timed-out client closed its connection and left.
    srv.handle
        .wait_until(WAIT, |p| (p.len() == 2).then_some(()))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_configurations_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |size, vectors| ServerConfig {
        socket: dir.path().join("s"),
        shm: dir.path().join("m").to_string_lossy().into_owned(),
        size,
        vectors,
        replace_shm: false,
    };
    let err = Server::bind(&cfg(3 << 20, 1)).unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");
    assert!(matches!(
        Server::bind(&cfg(1024, 1)),
        Err(Error::BadSize(1024))
    ));
    assert!(matches!(
        Server::bind(&cfg(4096, 0)),
        Err(Error::BadVectors { .. })
    ));
    assert!(matches!(
        Server::bind(&cfg(4096, 100_000)),
        Err(Error::BadVectors { .. })
    ));
    let live = Server::bind(&cfg(4096, 1)).unwrap();
    let err = Server::bind(&cfg(4096, 1)).unwrap_err();
    assert!(matches!(err, Error::SocketInUse(_)), "{err}");
    drop(live);
    assert!(!dir.path().join("s").exists() && !dir.path().join("m").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_peers_all_learn_about_each_other() {
    let srv = TestServer::start(4, 4096);
    let mut peers = Vec::new();
    for _ in 0..16 {
        peers.push(Client::connect(&srv.socket, 4).await.unwrap());
    }
    for sut in &peers {
        sut.wait_until(WAIT, |p| {
            (p.len() == 15 && p.iter().all(|i| i.vectors == 4)).then_some(())
        })
        .await
        .unwrap();
    }
    let (first, last) = (&peers[0], &peers[15]);
    last.ring(first.id(), 2).unwrap();
    assert!(readable(first.bell(2).unwrap(), 1000));
    peers.truncate(8);
    for sut in &peers {
        sut.wait_until(WAIT, |p| (p.len() == 7).then_some(()))
            .await
            .unwrap();
    }
}
