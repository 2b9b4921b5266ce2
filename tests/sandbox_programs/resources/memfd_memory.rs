// Writes 900 MiB into a memfd (page cache, never mapped: RLIMIT_AS does not see it), reporting as it goes.
use std::io::Write;
extern "C" { fn memfd_create(name: *const u8, flags: u32) -> i32; }
use std::os::unix::io::FromRawFd;

fn main() {
    let fd = unsafe { memfd_create(b"rc\0".as_ptr(), 0) };
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let block = vec![3u8; 1 << 20];
    let mut held = 0usize;
    for _ in 0..900 {
        if f.write_all(&block).is_err() { break; }
        held += 1;
        if held % 8 == 0 { println!("held={} MiB", held); std::io::stdout().flush().ok(); }
    }
    println!("held={} MiB", held);
    println!("done");
}
