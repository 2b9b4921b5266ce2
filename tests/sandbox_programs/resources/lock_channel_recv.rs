// Receiver of the lock channel: for six seconds, checks whether anyone else holds a lock on the shared files.
use std::os::unix::io::AsRawFd;
extern "C" { fn flock(fd: i32, op: i32) -> i32; fn fcntl(fd: i32, cmd: i32, ...) -> i32; }

#[repr(C)] struct Flock { l_type: i16, l_whence: i16, l_start: i64, l_len: i64, l_pid: i32 }

const SHARED: [&str; 4] = ["/usr/bin/env", "/etc/ld.so.cache", "/sysroot/bin/rustc", "/dev/null"];

fn main() {
    let files: Vec<_> = SHARED.iter().filter_map(|p| std::fs::File::open(p).ok().map(|f| (p, f))).collect();
    let start = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    let mut errors = std::collections::BTreeSet::new();
    while start.elapsed().as_secs() < 6 {
        for (path, f) in &files {
            let rc = unsafe { flock(f.as_raw_fd(), 2 | 4) };  // LOCK_EX | LOCK_NB
            if rc == 0 {
                unsafe { flock(f.as_raw_fd(), 8) };  // LOCK_UN
            } else {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(11) { seen.insert(format!("CHANNEL flock {}", path)); }
                else { errors.insert(format!("flock: {}", e)); }
            }
            let mut lk = Flock { l_type: 1, l_whence: 0, l_start: 0, l_len: 0, l_pid: 0 };  // F_WRLCK
            if unsafe { fcntl(f.as_raw_fd(), 5, &mut lk) } == 0 {  // F_GETLK
                if lk.l_type != 2 { seen.insert(format!("CHANNEL fcntl {}", path)); }  // not F_UNLCK
            } else {
                errors.insert(format!("fcntl: {}", std::io::Error::last_os_error()));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for s in &seen { println!("{}", s); }
    for e in &errors { println!("refused {}", e); }
    println!("listened");
}
