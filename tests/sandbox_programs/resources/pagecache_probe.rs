// The page cache of a shared read-only file as a channel between concurrent jobs: evict its pages
// (fadvise DONTNEED, madvise PAGEOUT, readahead to load them), probe residency (preadv2 RWF_NOWAIT,
// mincore, cachestat). Each must be refused; a plain read still works.
extern "C" {
    fn syscall(n: i64, ...) -> i64;
    fn mmap(a: *mut u8, l: usize, p: i32, f: i32, fd: i32, o: i64) -> *mut u8;
}
use std::os::fd::AsRawFd;

fn report(what: &str, rc: i64) {
    if rc < 0 {
        println!("{}: blocked ({})", what, std::io::Error::last_os_error());
    } else {
        println!("{}: ALLOWED", what);
    }
}

fn main() {
    let file = std::fs::File::open("/sysroot/bin/rustc").or_else(|_| std::fs::File::open("/bin/sh")).unwrap();
    let fd = file.as_raw_fd() as i64;
    let mut buf = [0u8; 4096];
    let n = std::io::Read::read(&mut &file, &mut buf).unwrap_or(0);
    println!("read {}", n);
    report("fadvise", unsafe { syscall(221, fd, 0i64, 0i64, 4i64) }); // POSIX_FADV_DONTNEED
    report("readahead", unsafe { syscall(187, fd, 0i64, 4096i64) });
    let iov = [buf.as_mut_ptr() as u64, 4096u64];
    report("preadv2", unsafe { syscall(327, fd, iov.as_ptr(), 1i64, 0i64, 0i64, 8i64) }); // RWF_NOWAIT
    let map = unsafe { mmap(std::ptr::null_mut(), 4096, 1, 1, fd as i32, 0) }; // PROT_READ, MAP_SHARED
    let mut vec = [0u8; 1];
    report("mincore", unsafe { syscall(27, map, 4096i64, vec.as_mut_ptr()) });
    report("madvise", unsafe { syscall(28, map, 4096i64, 21i64) }); // MADV_PAGEOUT
    let range = [0u64, 4096u64];
    let mut stat = [0u64; 5];
    report("cachestat", unsafe { syscall(451, fd, range.as_ptr(), stat.as_mut_ptr(), 0i64) });
}
