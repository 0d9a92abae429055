//! Region creation, opening and header validation over real shm/memfd mappings.

use std::sync::Arc;

use heteronet::error::{Error, HeaderError};
use heteronet::shm::{Region, RegionAddr};

fn unique_shm(tag: &str) -> RegionAddr {
    format!("shm:/heteronet-test-{tag}-{}", std::process::id())
        .parse()
        .unwrap()
}

#[test]
fn shm_region_is_created_0600_opened_and_removed_on_drop() {
    use std::os::unix::fs::PermissionsExt;
    let addr = unique_shm("create");
    let path = addr.file_path().unwrap();
    let sut = Region::create(&addr, Some(64 * 1024), 0).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let opened = Region::open(&addr).unwrap();
    assert_eq!(opened.header(), sut.header());
    assert_eq!(opened.generation(), 1);
    sut.bump_generation();
    assert_eq!(opened.generation(), 2);
    drop(opened);
    assert!(path.exists());
    drop(sut);
    assert!(!path.exists());
}

#[test]
fn open_reports_bad_magic_version_and_layout() {
    let addr = unique_shm("bad");
    let sut = Region::create(&addr, Some(16 * 1024), 1).unwrap();
    sut.poke(0, b"XXXXXXXX").unwrap();
    assert!(matches!(
        Region::open(&addr),
        Err(Error::Header(HeaderError::BadMagic(_)))
    ));
    let good = Region::create(&addr, Some(16 * 1024), 1).unwrap();
    drop(sut);
    good.poke(8, &7u32.to_le_bytes()).unwrap();
    assert!(matches!(
        Region::open(&addr),
        Err(Error::Header(HeaderError::Version { found: 7, .. }))
    ));
    good.poke(8, &1u32.to_le_bytes()).unwrap();
    good.poke(16, &u64::MAX.to_le_bytes()).unwrap();
    assert!(matches!(
        Region::open(&addr),
        Err(Error::Header(HeaderError::SizeMismatch { .. }))
    ));
}

#[test]
fn open_of_missing_or_tiny_region_is_an_error() {
    let addr = unique_shm("missing");
    assert!(matches!(Region::open(&addr), Err(Error::RegionIo { .. })));
    let path = addr.file_path().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"tiny").unwrap();
    let r = Region::open(&addr);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(r, Err(Error::Header(HeaderError::TooSmall(4)))));
}

#[test]
fn memfd_region_rings_carry_records_between_handles() {
    let sut = Arc::new(Region::create(&RegionAddr::Memfd, Some(8192), 0).unwrap());
    let ring = sut.ring(0).unwrap();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    assert!(ring.acquire_producer().is_none());
    assert!(p.try_push(&[b"hello ", b"world"]).unwrap());
    assert_eq!(c.pop().unwrap(), None, "unpublished records are invisible");
    p.publish();
    assert_eq!(c.pop().unwrap().unwrap(), b"hello world");
    assert!(sut.ring(2).is_err());
}

#[test]
fn one_producer_and_one_consumer_per_ring_however_often_it_is_asked_for() {
    let sut = Arc::new(Region::create(&RegionAddr::Memfd, Some(8192), 0).unwrap());
    let p = sut.ring(0).unwrap().acquire_producer().unwrap();
    let c = sut.ring(0).unwrap().acquire_consumer().unwrap();
    assert!(sut.ring(0).unwrap().acquire_producer().is_none());
    assert!(sut.ring(0).unwrap().acquire_consumer().is_none());
    // The other ring is separate; a dropped handle can be taken again.
    assert!(sut.ring(1).unwrap().acquire_producer().is_some());
    drop((p, c));
    assert!(sut.ring(0).unwrap().acquire_producer().is_some());
}

#[test]
fn reading_a_record_from_past_its_end_copies_nothing() {
    let sut = Arc::new(Region::create(&RegionAddr::Memfd, Some(8192), 0).unwrap());
    let ring = sut.ring(0).unwrap();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    assert!(p.try_push(&[b"abc"]).unwrap());
    p.publish();
    let n = c
        .pop_with(|r| {
            let mut out = [0u8; 8];
            (
                r.read(usize::MAX, &mut out),
                r.read(10, &mut out),
                r.read(1, &mut out),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(n, (0, 0, 2));
}

#[test]
fn a_misaligned_shared_index_breaks_the_ring_instead_of_writing_past_it() {
    let sut = Arc::new(Region::create(&RegionAddr::Memfd, Some(8192), 0).unwrap());
    let ring0 = sut.header().layout.rings[0];
    // The peer leaves tail = head = 3 before we take the producer.
    sut.poke(ring0.offset, &3u64.to_le_bytes()).unwrap();
    sut.poke(ring0.offset + 128, &3u64.to_le_bytes()).unwrap();
    let mut p = sut.ring(0).unwrap().acquire_producer().unwrap();
    assert!(p.try_push(&[b"x"]).is_err());
    let mut c = sut.ring(0).unwrap().acquire_consumer().unwrap();
    assert!(c.pop().is_err());
}

#[test]
fn reinit_heals_a_scribbled_header_and_bumps_generation() {
    let addr = unique_shm("reinit");
    let sut = Region::create(&addr, Some(16 * 1024), 0).unwrap();
    sut.poke(0, b"garbage!").unwrap();
    sut.poke(40, &[0xff; 40]).unwrap();
    assert!(Region::open(&addr).is_err());
    assert_eq!(sut.reinit(), 2);
    let opened = Region::open(&addr).unwrap();
    assert_eq!(opened.header().layout, sut.header().layout);
    assert_eq!(opened.generation(), 2);
}

#[test]
fn memfd_region_size_is_sealed_against_a_truncating_peer() {
    let sut = Region::create(&RegionAddr::Memfd, Some(4096), 0).unwrap();
    let fd = sut.fd().unwrap().try_clone_to_owned().unwrap();
    let f = std::fs::File::from(fd);
    assert!(f.set_len(0).is_err());
    assert!(f.set_len(sut.len() * 2).is_err());
}

#[test]
fn an_unsealed_memfd_is_refused_by_the_opener() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let sealed = Region::create(&RegionAddr::Memfd, Some(4096), 0).unwrap();
    let fd = sealed.fd().unwrap().try_clone_to_owned().unwrap();
    // The same bytes (a valid header and rings) in a memfd without seals.
    let bytes = std::fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let raw = nix::sys::memfd::memfd_create(
        c"unsealed",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut f = std::fs::File::from(raw);
    f.write_all(&bytes).unwrap();
    let err = match Region::from_fd(RegionAddr::Memfd, f.into()) {
        Ok(_) => panic!("unsealed memfd accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("not sealed"), "{err}");
    Region::from_fd(RegionAddr::Memfd, fd).expect("the sealed one opens");
}
