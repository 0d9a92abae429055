//! The C entry points, with libc's names and prototypes. Each one passes a
//! descriptor that is not a fast connection straight to libc; for a fast one
//! it turns the C arguments into slices and calls [`Conn`].
//!
//! Every function is `unsafe extern "C"`: its callers are C programs that
//! uphold libc's contract for the pointers they pass (valid for the lengths
//! given); the `SAFETY` notes below rely on exactly that.

use std::ffi::{c_int, c_ulong, c_void};

use libc::{iovec, msghdr, off_t, size_t, sockaddr, socklen_t, ssize_t};

use crate::conn::Conn;
use crate::options::{parse_sockaddr, sockaddr_bytes};
use crate::real::{self, set_errno};
use crate::{table, Errno};

fn ret_size(r: Result<usize, Errno>) -> ssize_t {
    match r {
        Ok(n) => n as ssize_t,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn ret_int(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// The caller's buffer as a slice.
///
/// # Safety
/// `p` must be valid for `n` writable bytes (or `n == 0`).
unsafe fn out_buf<'a>(p: *mut c_void, n: size_t) -> Result<&'a mut [u8], Errno> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: non-null and valid for n bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), n) })
}

/// # Safety
/// `p` must be valid for `n` readable bytes (or `n == 0`).
unsafe fn in_buf<'a>(p: *const c_void, n: size_t) -> Result<&'a [u8], Errno> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: non-null and valid for n bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) })
}

/// The iovec array as slices of it.
///
/// # Safety
/// `iov` must point at `n` iovecs, each valid for its length.
unsafe fn iovecs<'a>(iov: *const iovec, n: c_int) -> Result<&'a [iovec], Errno> {
    if !(0..=libc::UIO_MAXIOV).contains(&n) {
        return Err(libc::EINVAL);
    }
    if n == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller passes n valid iovecs.
    Ok(unsafe { std::slice::from_raw_parts(iov, n as usize) })
}

/// Gathers the iovecs' bytes (one record's worth of copying, kept simple).
///
/// # Safety
/// Every iovec must be valid for its length.
unsafe fn gather(v: &[iovec]) -> Result<Vec<u8>, Errno> {
    let mut all = Vec::new();
    for i in v {
        // SAFETY: by the caller's contract.
        all.extend_from_slice(unsafe { in_buf(i.iov_base, i.iov_len) }?);
    }
    Ok(all)
}

/// Reads into the iovecs in order.
///
/// # Safety
/// Every iovec must be valid for its length.
unsafe fn scatter_read(c: &Conn, v: &[iovec], flags: c_int) -> Result<usize, Errno> {
    let total: usize = v.iter().map(|i| i.iov_len).sum();
    let mut tmp = vec![0u8; total];
    let n = c.read(&mut tmp, flags)?;
    let mut at = 0;
    for i in v {
        if at == n {
            break;
        }
        let k = i.iov_len.min(n - at);
        // SAFETY: by the caller's contract, valid for iov_len >= k bytes.
        unsafe { out_buf(i.iov_base, k) }?.copy_from_slice(&tmp[at..at + k]);
        at += k;
    }
    Ok(n)
}

/// Writes `a` into a caller's sockaddr buffer, truncating as the kernel does.
///
/// # Safety
/// `addr` valid for `*len` bytes, `len` valid (both may be null: nothing written).
unsafe fn put_sockaddr(
    a: std::net::SocketAddr,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<(), Errno> {
    if addr.is_null() || len.is_null() {
        return Ok(());
    }
    let b = sockaddr_bytes(a);
    // SAFETY: `len` is valid by the caller's contract.
    let room = unsafe { *len } as usize;
    let n = room.min(b.len());
    // SAFETY: `addr` is valid for `room >= n` bytes.
    unsafe { out_buf(addr.cast(), n) }?.copy_from_slice(&b[..n]);
    // SAFETY: as above.
    unsafe { *len = b.len() as socklen_t };
    Ok(())
}

/// `read`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `read`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::read(fd, buf, n) },
        // SAFETY: libc contract: buf is valid for n bytes.
        Some(c) => ret_size(unsafe { out_buf(buf, n) }.and_then(|b| c.read(b, 0))),
    }
}

/// `__read_chk`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `__read_chk`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        // What glibc's fortify check does: the program overflows its buffer.
        std::process::abort();
    }
    // SAFETY: as for `read`.
    unsafe { read(fd, buf, n) }
}

/// `recv`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `recv`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::recv(fd, buf, n, flags) },
        // SAFETY: libc contract: buf is valid for n bytes.
        Some(c) => ret_size(unsafe { out_buf(buf, n) }.and_then(|b| c.read(b, flags))),
    }
}

/// `__recv_chk`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `__recv_chk`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        std::process::abort();
    }
    // SAFETY: as for `recv`.
    unsafe { recv(fd, buf, n, flags) }
}

/// `recvfrom`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `recvfrom`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::recvfrom(fd, buf, n, flags, addr, len) };
    };
    // SAFETY: libc contract for buf/n and addr/len.
    let r = unsafe { out_buf(buf, n) }
        .and_then(|b| c.read(b, flags))
        // SAFETY: as above.
        .and_then(|k| unsafe { put_sockaddr(c.peer, addr, len) }.map(|_| k));
    ret_size(r)
}

/// `__recvfrom_chk`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `__recvfrom_chk`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        std::process::abort();
    }
    // SAFETY: as for `recvfrom`.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

/// `readv`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `readv`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::readv(fd, iov, n) };
    };
    // SAFETY: libc contract: n valid iovecs.
    ret_size(unsafe { iovecs(iov, n) }.and_then(|v| unsafe { scatter_read(&c, v, 0) }))
}

/// `recvmsg`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `recvmsg`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::recvmsg(fd, msg, flags) };
    };
    if msg.is_null() {
        return ret_size(Err(libc::EFAULT));
    }
    // SAFETY: msg is a valid msghdr by the libc contract; its iovecs and name
    // buffer are valid for the lengths it gives.
    let r = unsafe {
        let m = &mut *msg;
        let got = iovecs(m.msg_iov, m.msg_iovlen as c_int).and_then(|v| scatter_read(&c, v, flags));
        if got.is_ok() {
            let mut namelen = m.msg_namelen;
            let _ = put_sockaddr(c.peer, m.msg_name.cast(), &mut namelen);
            m.msg_namelen = namelen;
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
        got
    };
    ret_size(r)
}

/// `write`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `write`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::write(fd, buf, n) },
        // SAFETY: libc contract: buf is valid for n bytes.
        Some(c) => ret_size(unsafe { in_buf(buf, n) }.and_then(|b| c.write(b, 0))),
    }
}

/// `send`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `send`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::send(fd, buf, n, flags) },
        // SAFETY: libc contract: buf is valid for n bytes.
        Some(c) => ret_size(unsafe { in_buf(buf, n) }.and_then(|b| c.write(b, flags))),
    }
}

/// `sendto`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `sendto`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::sendto(fd, buf, n, flags, addr, len) },
        // A connected TCP socket ignores the address, as Linux does.
        // SAFETY: libc contract: buf is valid for n bytes.
        Some(c) => ret_size(unsafe { in_buf(buf, n) }.and_then(|b| c.write(b, flags))),
    }
}

/// `writev`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `writev`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::writev(fd, iov, n) };
    };
    // SAFETY: libc contract: n valid iovecs, each valid for its length.
    let r = unsafe { iovecs(iov, n) }.and_then(|v| unsafe { gather(v) });
    ret_size(r.and_then(|b| c.write(&b, 0)))
}

/// `sendmsg`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `sendmsg`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::sendmsg(fd, msg, flags) };
    };
    if msg.is_null() {
        return ret_size(Err(libc::EFAULT));
    }
    // SAFETY: msg is a valid msghdr whose iovecs are valid (libc contract).
    let r = unsafe {
        let m = &*msg;
        iovecs(m.msg_iov, m.msg_iovlen as c_int).and_then(|v| gather(v))
    };
    ret_size(r.and_then(|b| c.write(&b, flags)))
}

/// `sendfile`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `sendfile`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn sendfile(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t {
    let Some(c) = table::get(out) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::sendfile(out, inp, off, n) };
    };
    let mut tmp = vec![0u8; n.min(64 * 1024)];
    // SAFETY: tmp is valid for its length; `off`, when not null, is a valid
    // offset by the libc contract.
    let got = unsafe {
        if off.is_null() {
            real::read(inp, tmp.as_mut_ptr().cast(), tmp.len())
        } else {
            libc::pread(inp, tmp.as_mut_ptr().cast(), tmp.len(), *off)
        }
    };
    if got < 0 {
        return -1;
    }
    let r = c.write(&tmp[..got as usize], 0);
    if let (Ok(k), false) = (&r, off.is_null()) {
        // SAFETY: as above.
        unsafe { *off += *k as off_t };
    }
    ret_size(r)
}

/// `sendfile64`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `sendfile64`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn sendfile64(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t {
    // SAFETY: off_t is 64-bit on the targets this library builds for.
    unsafe { sendfile(out, inp, off, n) }
}

/// `connect`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `connect`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if crate::disabled() || addr.is_null() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::connect(fd, addr, len) };
    }
    if table::get(fd).is_some() {
        return ret_int(Err(libc::EISCONN));
    }
    // SAFETY: addr is valid for len bytes (libc contract).
    let dest = unsafe { in_buf(addr.cast(), len as usize) }
        .ok()
        .and_then(parse_sockaddr);
    let tcp = || {
        real::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
            && matches!(
                real::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL),
                Ok(0) | Ok(libc::IPPROTO_TCP)
            )
    };
    if let Some(dest) = dest.filter(|_| tcp()) {
        if let Some(r) = crate::broker::connect_fast(fd, dest) {
            return ret_int(r);
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { real::connect(fd, addr, len) }
}

/// `listen`: a TCP listener registers with the broker, so connections of
/// the Pod's other half can come to it on the fast path.
///
/// # Safety
/// No pointers.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: no pointers.
    let r = unsafe { real::listen(fd, backlog) };
    if r == 0 && !crate::disabled() {
        let errno = real::errno();
        crate::listeners::listened(fd);
        set_errno(errno);
    }
    r
}

/// `accept`, served here for connections of the other half.
///
/// # Safety
/// The C contract of libc's `accept`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged.
    let nfd = unsafe { real::accept(fd, addr, len) };
    // SAFETY: as for accept.
    unsafe { accepted(fd, nfd, addr, len) }
}

/// `accept4`, served here for connections of the other half.
///
/// # Safety
/// The C contract of libc's `accept4`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged.
    let nfd = unsafe { real::accept4(fd, addr, len, flags) };
    // SAFETY: as for accept4.
    unsafe { accepted(fd, nfd, addr, len) }
}

/// After a successful accept: a fast connection reports its real peer.
///
/// # Safety
/// `addr` valid for `*len` bytes, `len` valid (both may be null).
unsafe fn accepted(fd: c_int, nfd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if nfd < 0 || crate::disabled() {
        return nfd;
    }
    let errno = real::errno();
    if let Some(peer) = crate::listeners::accepted(fd, nfd) {
        // SAFETY: by this function's contract.
        let _ = unsafe { put_sockaddr(peer, addr, len) };
    }
    set_errno(errno);
    nfd
}

/// `close`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `close`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if crate::internal::is_internal(fd) {
        // The library's own (see `internal`): never the program's to close.
        return 0;
    }
    table::remove(fd);
    crate::listeners::forget(fd);
    // SAFETY: closing a descriptor number has no memory preconditions.
    unsafe { real::close(fd) }
}

/// `close_range`: closes the range except the library's own descriptors.
///
/// # Safety
/// No pointers.
#[no_mangle]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    table::remove_within(first, last);
    crate::listeners::forget_within(first, last);
    let mut from = first;
    for fd in crate::internal::within(first, last) {
        let fd = fd as libc::c_uint;
        if fd > from {
            // SAFETY: no pointers.
            let r = unsafe { real::close_range(from, fd - 1, flags) };
            if r < 0 {
                return r;
            }
        }
        from = fd + 1;
    }
    if from > last || from < first {
        return 0;
    }
    // SAFETY: no pointers.
    unsafe { real::close_range(from, last, flags) }
}

/// `shutdown`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `shutdown`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    match table::get(fd) {
        // SAFETY: no pointers.
        None => unsafe { real::shutdown(fd, how) },
        Some(c) => ret_int(c.shutdown(how)),
    }
}

/// A fast connection's answer to getsockopt.
fn sockopt(c: &Conn, level: c_int, name: c_int) -> Option<c_int> {
    if let Some(v) = c.options.get(level, name) {
        return Some(v);
    }
    Some(match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => 0,
        (libc::SOL_SOCKET, libc::SO_TYPE) => libc::SOCK_STREAM,
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => libc::IPPROTO_TCP,
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => match c.peer {
            std::net::SocketAddr::V4(_) => libc::AF_INET,
            std::net::SocketAddr::V6(_) => libc::AF_INET6,
        },
        (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_SNDBUF) => c.buffer_bytes() as c_int,
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => 65483,
        _ => return None,
    })
}

/// `getsockopt`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `getsockopt`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::getsockopt(fd, level, name, val, len) };
    };
    if len.is_null() {
        return ret_int(Err(libc::EFAULT));
    }
    // SAFETY: len is valid (checked non-null; libc contract).
    let room = unsafe { *len } as usize;
    // SAFETY: val is valid for *len bytes (libc contract).
    let out = match unsafe { out_buf(val, room) } {
        Ok(o) => o,
        Err(e) => return ret_int(Err(e)),
    };
    let (bytes, n) = match sockopt(&c, level, name) {
        Some(v) => (v.to_ne_bytes().to_vec(), 4.min(room)),
        // Structures (TCP_INFO and the like): zeroes, at the size asked for.
        None => (vec![0u8; room], room),
    };
    out[..n].copy_from_slice(&bytes[..n]);
    // SAFETY: len is valid.
    unsafe { *len = n as socklen_t };
    0
}

/// `setsockopt`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `setsockopt`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let Some(c) = table::get(fd) else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { real::setsockopt(fd, level, name, val, len) };
    };
    // SAFETY: val is valid for len bytes (libc contract).
    match unsafe { in_buf(val, len as usize) } {
        Ok(b) if b.len() >= 4 => {
            c.options
                .set(level, name, i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            0
        }
        Ok(_) => 0,
        Err(e) => ret_int(Err(e)),
    }
}

/// `getsockname`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `getsockname`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::getsockname(fd, addr, len) },
        // SAFETY: addr valid for *len bytes (libc contract).
        Some(c) => ret_int(unsafe { put_sockaddr(c.local, addr, len) }),
    }
}

/// `getpeername`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `getpeername`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match table::get(fd) {
        // SAFETY: the caller's arguments, passed on unchanged.
        None => unsafe { real::getpeername(fd, addr, len) },
        // SAFETY: addr valid for *len bytes (libc contract).
        Some(c) => ret_int(unsafe { put_sockaddr(c.peer, addr, len) }),
    }
}

/// A new descriptor `to` refers to what `from` does.
fn copied(from: c_int, to: c_int) -> c_int {
    if to >= 0 {
        table::remove(to);
        crate::listeners::forget(to);
        if let Some(c) = table::get(from) {
            table::insert(to, c);
        }
    }
    to
}

/// `dup`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `dup`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: no pointers.
    copied(fd, unsafe { real::dup(fd) })
}

/// `dup2`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `dup2`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    if fd == to {
        // SAFETY: no pointers.
        return unsafe { real::dup2(fd, to) };
    }
    // SAFETY: no pointers.
    copied(fd, unsafe { real::dup2(fd, to) })
}

/// `dup3`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `dup3`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    // SAFETY: no pointers.
    copied(fd, unsafe { real::dup3(fd, to, flags) })
}

/// `fcntl` is variadic in C; every command takes at most one integer or
/// pointer, which the x86-64 and aarch64 calling conventions pass in the
/// same register as a fixed third argument.
/// `fcntl`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `fcntl`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { real::fcntl(fd, cmd, arg) };
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        return copied(fd, r);
    }
    r
}

/// `fcntl64`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `fcntl64`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: as for `fcntl`.
    unsafe { fcntl(fd, cmd, arg) }
}

/// `ioctl`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `ioctl`: pointers valid for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    match table::get(fd) {
        Some(c) if req == libc::FIONREAD => {
            let n = c.readable_bytes().min(c_int::MAX as usize) as c_int;
            // SAFETY: FIONREAD's argument is an int* (libc contract).
            match unsafe { out_buf(arg, std::mem::size_of::<c_int>()) } {
                Ok(b) => {
                    b.copy_from_slice(&n.to_ne_bytes());
                    0
                }
                Err(e) => ret_int(Err(e)),
            }
        }
        // Everything else (FIONBIO too) acts on the real descriptor.
        // SAFETY: the caller's arguments, passed on unchanged.
        _ => unsafe { real::ioctl(fd, req, arg) },
    }
}

/// Zero timeouts for the spinning calls.
const ZERO_TS: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// `epoll_wait`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `epoll_wait`: `ev` valid for `max` events.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    if timeout != 0 {
        // SAFETY: the caller's arguments, with a zero timeout.
        if let Some(r) = crate::wait::spin_first(|| unsafe { real::epoll_wait(ep, ev, max, 0) }) {
            return r;
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    crate::wait::after_block(unsafe { real::epoll_wait(ep, ev, max, timeout) })
}

/// `epoll_pwait`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `epoll_pwait`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    if timeout != 0 {
        // SAFETY: the caller's arguments, with a zero timeout.
        let now = || unsafe { real::epoll_pwait(ep, ev, max, 0, mask) };
        if let Some(r) = crate::wait::spin_first(now) {
            return r;
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    crate::wait::after_block(unsafe { real::epoll_pwait(ep, ev, max, timeout, mask) })
}

/// `poll`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `poll`: `fds` valid for `n` entries.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    if timeout != 0 {
        // SAFETY: the caller's arguments, with a zero timeout.
        if let Some(r) = crate::wait::spin_first(|| unsafe { real::poll(fds, n, 0) }) {
            return r;
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    crate::wait::after_block(unsafe { real::poll(fds, n, timeout) })
}

/// `__poll_chk` (fortified `poll`), served here for fast connections.
///
/// # Safety
/// As for `poll`; `fdslen` is the size of the array the caller owns.
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if (n as usize).saturating_mul(std::mem::size_of::<libc::pollfd>()) > fdslen {
        std::process::abort();
    }
    // SAFETY: as for `poll`.
    unsafe { poll(fds, n, timeout) }
}

/// `ppoll`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `ppoll`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: `timeout` is null or valid (libc contract).
    let zero_timeout =
        !timeout.is_null() && unsafe { (*timeout).tv_sec == 0 && (*timeout).tv_nsec == 0 };
    if !zero_timeout {
        // SAFETY: the caller's arguments, with a zero timeout.
        if let Some(r) = crate::wait::spin_first(|| unsafe { real::ppoll(fds, n, &ZERO_TS, mask) })
        {
            return r;
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    crate::wait::after_block(unsafe { real::ppoll(fds, n, timeout, mask) })
}

/// The three descriptor sets of a select call, saved so each spinning call
/// starts from what the program asked for.
struct Sets([Option<libc::fd_set>; 3]);

impl Sets {
    /// # Safety
    /// Each pointer is null or a valid fd_set.
    unsafe fn save(p: [*mut libc::fd_set; 3]) -> Sets {
        // SAFETY: by the caller's contract; fd_set is plain data.
        Sets(p.map(|s| (!s.is_null()).then(|| unsafe { *s })))
    }

    /// # Safety
    /// The same pointers as given to `save`.
    unsafe fn restore(&self, p: [*mut libc::fd_set; 3]) {
        for (saved, ptr) in self.0.iter().zip(p) {
            if let Some(v) = saved {
                // SAFETY: ptr was non-null and valid when saved (same call).
                unsafe { *ptr = *v };
            }
        }
    }
}

/// `select`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `select`.
#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    // SAFETY: `timeout` is null or valid (libc contract).
    let zero_timeout =
        !timeout.is_null() && unsafe { (*timeout).tv_sec == 0 && (*timeout).tv_usec == 0 };
    if !zero_timeout && crate::table::len() > 0 {
        let ptrs = [r, w, e];
        // SAFETY: the sets are null or valid (libc contract).
        let saved = unsafe { Sets::save(ptrs) };
        let now = || {
            let mut zero = libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            };
            // SAFETY: the caller's sets, restored before each call.
            unsafe {
                saved.restore(ptrs);
                real::select(n, r, w, e, &mut zero)
            }
        };
        if let Some(ready) = crate::wait::spin_first(now) {
            return ready;
        }
        // SAFETY: as above.
        unsafe { saved.restore(ptrs) };
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    crate::wait::after_block(unsafe { real::select(n, r, w, e, timeout) })
}

/// `pselect`, served here for fast connections.
///
/// # Safety
/// The C contract of libc's `pselect`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: `timeout` is null or valid (libc contract).
    let zero_timeout =
        !timeout.is_null() && unsafe { (*timeout).tv_sec == 0 && (*timeout).tv_nsec == 0 };
    if !zero_timeout && crate::table::len() > 0 {
        let ptrs = [r, w, e];
        // SAFETY: the sets are null or valid (libc contract).
        let saved = unsafe { Sets::save(ptrs) };
        let now = || {
            // SAFETY: the caller's sets, restored before each call.
            unsafe {
                saved.restore(ptrs);
                real::pselect(n, r, w, e, &ZERO_TS, mask)
            }
        };
        if let Some(ready) = crate::wait::spin_first(now) {
            return ready;
        }
        // SAFETY: as above.
        unsafe { saved.restore(ptrs) };
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    crate::wait::after_block(unsafe { real::pselect(n, r, w, e, timeout, mask) })
}

/// glibc's `cookie_io_functions_t`.
#[repr(C)]
struct CookieIo {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut libc::c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const libc::c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut libc::off64_t, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const libc::c_char, io: CookieIo)
        -> *mut libc::FILE;
}

/// The descriptor a stream's cookie stands for.
fn cookie_fd(cookie: *mut c_void) -> c_int {
    cookie as usize as c_int
}

unsafe extern "C" fn cookie_read(
    cookie: *mut c_void,
    buf: *mut libc::c_char,
    n: size_t,
) -> ssize_t {
    // SAFETY: stdio passes its buffer, valid for n bytes.
    unsafe { read(cookie_fd(cookie), buf.cast(), n) }
}

unsafe extern "C" fn cookie_write(
    cookie: *mut c_void,
    buf: *const libc::c_char,
    n: size_t,
) -> ssize_t {
    // SAFETY: stdio passes its buffer, valid for n bytes.
    unsafe { write(cookie_fd(cookie), buf.cast(), n) }
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    // SAFETY: no pointers.
    unsafe { close(cookie_fd(cookie)) }
}

/// `fdopen`, served here for fast connections: glibc's stdio reads and writes
/// through internal calls this library cannot see, so a stream over a fast
/// connection is a cookie stream whose reads and writes come here.
///
/// # Safety
/// The C contract of libc's `fdopen`: `mode` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const libc::c_char) -> *mut libc::FILE {
    if table::get(fd).is_some() {
        let io = CookieIo {
            read: Some(cookie_read),
            write: Some(cookie_write),
            seek: None,
            close: Some(cookie_close),
        };
        // SAFETY: `mode` is the caller's string; the cookie is the descriptor
        // number, not a pointer, and the callbacks only use it as such.
        return unsafe { fopencookie(fd as usize as *mut c_void, mode, io) };
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { real::fdopen(fd, mode) }
}
