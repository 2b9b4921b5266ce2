// Watches files every job opens (the toolchain, libc) for access by others: a channel between jobs.
// inotify first, then dnotify (fcntl F_NOTIFY with DN_ACCESS on the shared directory).
extern "C" {
    fn inotify_init1(flags: i32) -> i32;
    fn inotify_add_watch(fd: i32, p: *const u8, m: u32) -> i32;
    fn open(p: *const u8, f: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}

fn main() {
    let fd = unsafe { inotify_init1(0o4000) };  // IN_NONBLOCK
    if fd < 0 {
        println!("blocked: {}", std::io::Error::last_os_error());
    } else {
        let w = unsafe { inotify_add_watch(fd, b"/usr/lib/x86_64-linux-gnu\0".as_ptr(), 0x20 | 0x1) };
        println!("WATCHING shared files (watch {})", w);
    }
    let dir = unsafe { open(b"/usr/lib\0".as_ptr(), 0o200000) };  // O_RDONLY | O_DIRECTORY
    if unsafe { fcntl(dir, 1026, 0x1 | 0x80000000u32 as i32) } == 0 {  // F_NOTIFY, DN_ACCESS | DN_MULTISHOT
        println!("DNOTIFY WATCHING shared files");
    } else {
        println!("dnotify: blocked ({})", std::io::Error::last_os_error());
    }
}
