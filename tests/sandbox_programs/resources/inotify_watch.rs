// Watches files every job opens (the toolchain, libc) for access by others: a channel between jobs.
extern "C" { fn inotify_init1(flags: i32) -> i32; fn inotify_add_watch(fd: i32, p: *const u8, m: u32) -> i32; }

fn main() {
    let fd = unsafe { inotify_init1(0o4000) };  // IN_NONBLOCK
    if fd < 0 {
        println!("blocked: {}", std::io::Error::last_os_error());
        return;
    }
    let w = unsafe { inotify_add_watch(fd, b"/usr/lib/x86_64-linux-gnu\0".as_ptr(), 0x20 | 0x1) };
    println!("WATCHING shared files (watch {})", w);
}
