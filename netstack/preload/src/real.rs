//! The libc functions this library wraps, looked up once with
//! `dlsym(RTLD_NEXT, ..)` so calls reach libc, not the wrappers in
//! [`crate::exports`] (which share their names).

use std::ffi::{c_int, c_ulong, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{iovec, msghdr, off_t, size_t, sockaddr, socklen_t, ssize_t};

/// The next definition of `name` after this library, cached in `slot`.
fn next(name: &CStr, slot: &AtomicPtr<c_void>) -> *mut c_void {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return p;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no
    // preconditions; a null result is handled by the caller.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    slot.store(p, Ordering::Release);
    p
}

/// Declares `pub unsafe fn $name(..)` calling libc's `$name` through [`next`].
/// Without a definition to call, it fails with ENOSYS.
macro_rules! real {
    ($name:ident ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty) => {
        /// libc's function of this name.
        ///
        /// # Safety
        /// As for the libc function: the pointers must be valid as it documents.
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            static SLOT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
            let p = next(
                // SAFETY: the literal ends with the NUL added here and has no other NUL.
                unsafe { CStr::from_bytes_with_nul_unchecked(concat!(stringify!($name), "\0").as_bytes()) },
                &SLOT,
            );
            if p.is_null() {
                set_errno(libc::ENOSYS);
                return -1 as $ret;
            }
            // SAFETY: `p` is libc's definition of this very function, whose C
            // prototype is the one declared here.
            let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(p) };
            // SAFETY: the caller upholds the function's contract.
            unsafe { f($($arg),*) }
        }
    };
}

real!(read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t);
real!(write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t);
real!(recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t);
real!(send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t);
real!(recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t);
real!(sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t);
real!(recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t);
real!(sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t);
real!(readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t);
real!(writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t);
real!(close(fd: c_int) -> c_int);
real!(close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int);
real!(shutdown(fd: c_int, how: c_int) -> c_int);
real!(connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int);
real!(listen(fd: c_int, backlog: c_int) -> c_int);
real!(accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int);
real!(accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int);
real!(getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int);
real!(setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int);
real!(getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int);
real!(getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int);
real!(dup(fd: c_int) -> c_int);
real!(dup2(fd: c_int, to: c_int) -> c_int);
real!(dup3(fd: c_int, to: c_int, flags: c_int) -> c_int);
real!(sendfile(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t);
real!(epoll_wait(ep: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int);
real!(epoll_pwait(ep: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int);
real!(poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int);
real!(ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int);
real!(select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, timeout: *mut libc::timeval) -> c_int);
real!(pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int);

/// libc's `fcntl` with one integer (or pointer-sized) argument.
///
/// # Safety
/// As for `fcntl`: `arg` must be what `cmd` expects.
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    static SLOT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
    let p = next(c"fcntl", &SLOT);
    if p.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `p` is libc's variadic `int fcntl(int, int, ...)`.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = unsafe { std::mem::transmute(p) };
    // SAFETY: the caller passes the argument `cmd` expects.
    unsafe { f(fd, cmd, arg) }
}

/// libc's `ioctl` with one pointer-sized argument.
///
/// # Safety
/// As for `ioctl`: `arg` must be what `req` expects.
pub unsafe fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    static SLOT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
    let p = next(c"ioctl", &SLOT);
    if p.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `p` is libc's variadic `int ioctl(int, unsigned long, ...)`.
    let f: unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int = unsafe { std::mem::transmute(p) };
    // SAFETY: the caller passes the argument `req` expects.
    unsafe { f(fd, req, arg) }
}

/// libc's `fdopen`.
///
/// # Safety
/// As for `fdopen`: `mode` is a NUL-terminated string.
pub unsafe fn fdopen(fd: c_int, mode: *const libc::c_char) -> *mut libc::FILE {
    static SLOT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
    let p = next(c"fdopen", &SLOT);
    if p.is_null() {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    }
    // SAFETY: `p` is libc's `FILE *fdopen(int, const char *)`.
    let f: unsafe extern "C" fn(c_int, *const libc::c_char) -> *mut libc::FILE =
        unsafe { std::mem::transmute(p) };
    // SAFETY: the caller upholds fdopen's contract.
    unsafe { f(fd, mode) }
}

/// Sets the calling thread's errno.
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// The calling thread's errno.
pub fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

// Safe forms of the calls the connection code makes on descriptors it owns.

/// `recv` into `buf` with `flags`.
pub fn recv_into(fd: c_int, buf: &mut [u8], flags: c_int) -> Result<usize, c_int> {
    // SAFETY: `buf` is valid for `buf.len()` writable bytes.
    let n = unsafe { recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// `send` of `buf` with `flags`.
pub fn send_from(fd: c_int, buf: &[u8], flags: c_int) -> Result<usize, c_int> {
    // SAFETY: `buf` is valid for `buf.len()` readable bytes.
    let n = unsafe { send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// `fcntl` with an integer argument (F_GETFL, F_SETFL, F_GETFD, F_DUPFD_CLOEXEC).
pub fn fcntl_int(fd: c_int, cmd: c_int, arg: c_int) -> Result<c_int, c_int> {
    // SAFETY: these commands take an int (or nothing) and touch no memory.
    let r = unsafe { fcntl(fd, cmd, arg as c_ulong) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `dup3(from, to, flags)`.
pub fn dup_onto(from: c_int, to: c_int, flags: c_int) -> Result<(), c_int> {
    // SAFETY: dup3 takes no pointers.
    if unsafe { dup3(from, to, flags) } < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `poll` on `fds` for at most `timeout_ms` (-1: forever); the ready count.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: c_int) -> Result<usize, c_int> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
    let r = unsafe { poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// Raises SIGPIPE in this thread, as a write to a closed socket does.
pub fn raise_sigpipe() {
    // SAFETY: raise has no memory preconditions.
    let _ = unsafe { libc::raise(libc::SIGPIPE) };
}

/// An integer socket option of a descriptor this library does not own.
pub fn getsockopt_int(fd: c_int, level: c_int, name: c_int) -> Result<c_int, c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `len` are valid for the writes getsockopt makes (an int).
    let r = unsafe { getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(v)
    }
}

/// The local (`peer == false`) or peer address of a socket, if it is IP.
pub fn sock_addr(fd: c_int, peer: bool) -> Option<std::net::SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    let p = (&mut st as *mut libc::sockaddr_storage).cast::<sockaddr>();
    // SAFETY: `st` and `len` are valid for the writes the call makes (at most `len` bytes).
    let r = unsafe {
        if peer {
            getpeername(fd, p, &mut len)
        } else {
            getsockname(fd, p, &mut len)
        }
    };
    if r < 0 {
        return None;
    }
    let n = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `st` is valid for its size and `n` does not exceed it.
    let bytes = unsafe {
        std::slice::from_raw_parts((&st as *const libc::sockaddr_storage).cast::<u8>(), n)
    };
    crate::options::parse_sockaddr(bytes)
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
pub fn dup_at_least(fd: &std::os::fd::OwnedFd, min: c_int) -> Result<std::os::fd::OwnedFd, c_int> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let n = fcntl_int(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min)?;
    // SAFETY: `n` was just returned by F_DUPFD_CLOEXEC and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}
