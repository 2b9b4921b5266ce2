// Reserves 2 GiB in the job's directory with fallocate (no data written): the tmpfs cap refuses.
extern "C" { fn fallocate(fd: i32, mode: i32, offset: i64, len: i64) -> i32; }
use std::os::unix::io::AsRawFd;

fn main() {
    let f = std::fs::File::create("reserved").unwrap();
    let rc = unsafe { fallocate(f.as_raw_fd(), 0, 0, 2 << 30) };
    let size = std::fs::metadata("reserved").map(|m| m.len()).unwrap_or(0);
    println!("fallocate rc={} size={}", rc, size);
}
