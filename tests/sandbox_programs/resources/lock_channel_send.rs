// Sender of a covert channel between concurrent jobs: takes flock and fcntl read locks on files every
// job can open read-only (the toolchain, /usr, /dev/null), holds them, and says what it got.
use std::os::unix::io::AsRawFd;
extern "C" { fn flock(fd: i32, op: i32) -> i32; fn fcntl(fd: i32, cmd: i32, ...) -> i32; }

#[repr(C)] struct Flock { l_type: i16, l_whence: i16, l_start: i64, l_len: i64, l_pid: i32 }

const SHARED: [&str; 4] = ["/usr/bin/env", "/etc/ld.so.cache", "/sysroot/bin/rustc", "/dev/null"];

fn main() {
    let mut held = vec![];
    for path in SHARED {
        let f = match std::fs::File::open(path) { Ok(f) => f, Err(_) => continue };
        let a = unsafe { flock(f.as_raw_fd(), 2) } == 0;  // LOCK_EX
        let lk = Flock { l_type: 0, l_whence: 0, l_start: 0, l_len: 0, l_pid: 0 };  // F_RDLCK
        let b = unsafe { fcntl(f.as_raw_fd(), 6, &lk) } == 0;  // F_SETLK
        println!("{}: flock {} fcntl {}", path, if a { "held" } else { "blocked" }, if b { "held" } else { "blocked" });
        held.push(f);
    }
    std::thread::sleep(std::time::Duration::from_secs(6));
    println!("released");
}
