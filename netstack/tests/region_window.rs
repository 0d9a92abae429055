//! Regions that are one `@k/n` slot window of a larger file: each window is a
//! complete region with its own header, windows never touch each other, and
//! bad windows are refused with clear errors.

use std::path::PathBuf;

use heteronet::shm::Region;
use heteronet::{Destination, LinkBuilder, Mux, MuxEvent, RegionAddr, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 1 << 20;

/// A 1 MiB file under /dev/shm, removed on drop.
struct ShmFile {
    name: String,
    path: PathBuf,
}

impl ShmFile {
    fn new(tag: &str) -> ShmFile {
        let name = format!("heteronet-window-{tag}-{}", std::process::id());
        let path = PathBuf::from(format!("/dev/shm/{name}"));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(SIZE).unwrap();
        ShmFile { name, path }
    }

    fn addr(&self, slot: &str) -> RegionAddr {
        format!("shm:/{}@{slot}", self.name).parse().unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn each_window_is_a_region_of_its_own() {
    let f = ShmFile::new("own");
    let sut = Region::create(&f.addr("1/4"), None, 0).unwrap();
    assert_eq!(sut.len(), SIZE / 4);
    assert!(sut.header().layout.total_size <= SIZE / 4);
    sut.poke(SIZE / 4 - 8, b"lastword").unwrap();
    assert!(
        sut.poke(SIZE / 4 - 7, b"lastword").is_err(),
        "poke past the window"
    );
    let bytes = f.bytes();
    let (start, end) = ((SIZE / 4) as usize, (SIZE / 2) as usize);
    assert_eq!(
        &bytes[start..start + 8],
        b"HTRONET1",
        "header at the window start"
    );
    assert_eq!(&bytes[end - 8..end], b"lastword");
    assert!(bytes[..start].iter().all(|&b| b == 0), "slot 0 touched");
    assert!(bytes[end..].iter().all(|&b| b == 0), "slots 2-3 touched");

    // The opener of the same window validates that header; other windows have none.
    let opened = Region::open(&f.addr("1/4")).unwrap();
    assert_eq!(opened.header(), sut.header());
    assert!(Region::open(&f.addr("2/4")).is_err());
    assert!(Region::open(&f.addr("0/2")).is_err());
    // The file belongs to whoever made it: a window never removes it.
    drop(sut);
    drop(opened);
    assert!(f.path.exists());
}

#[test]
fn bad_windows_are_refused_with_clear_errors() {
    let f = ShmFile::new("bad");
    let e = Region::create(&f.addr("0/3"), None, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not page aligned"), "{e}");
    let e = Region::create(&f.addr("0/64"), None, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller than the smallest region"), "{e}");
    let e = Region::create(&f.addr("0/4"), Some(1 << 20), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bytes"), "{e}");
    let missing: RegionAddr = "shm:/heteronet-window-missing@0/2".parse().unwrap();
    assert!(
        Region::create(&missing, None, 0).is_err(),
        "a window never creates its file"
    );
    // A header that claims more than the window is refused by the opener.
    let sut = Region::create(&f.addr("0/4"), None, 0).unwrap();
    sut.poke(16, &(SIZE / 2).to_le_bytes()).unwrap();
    let e = Region::open(&f.addr("0/4")).unwrap_err().to_string();
    assert!(e.contains("mapping has"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_windows_carry_two_links_side_by_side() {
    let f = ShmFile::new("links");
    let dir = tempfile::tempdir().unwrap();
    let mut handles = Vec::new();
    for k in 0..2u32 {
        let addr = f.addr(&format!("{k}/2"));
        let sock = dir.path().join(format!("{k}.sock"));
        let creator = LinkBuilder::new(addr.clone())
            .side(Side::Cpu)
            .rendezvous(&sock)
            .create()
            .unwrap();
        let (cpu, _cpu_ev) = Mux::start(creator);
        let (dpu, mut dpu_ev) =
            Mux::start(LinkBuilder::new(addr).side(Side::Dpu).rendezvous(&sock));
        cpu.connected().await.unwrap();
        let echo = tokio::spawn(async move {
            while let Some(ev) = dpu_ev.next().await {
                if let MuxEvent::Stream(mut s, _) = ev {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                    s.shutdown().await.unwrap();
                }
            }
        });
        handles.push((cpu, dpu, echo, _cpu_ev));
    }
    for (k, (cpu, ..)) in handles.iter().enumerate() {
        let msg = vec![k as u8 + 1; 200_000];
        let mut s = cpu
            .open(Destination::tcp("127.0.0.1:9".parse().unwrap()))
            .await
            .unwrap();
        s.write_all(&msg).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert!(back == msg, "window {k} echoed other bytes");
    }
}
