// Leaves fifos and unix socket files behind, with a child blocked opening a fifo (cleanup must not open them).
use std::os::unix::net::UnixListener;
extern "C" { fn mkfifo(p: *const u8, m: u32) -> i32; }

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 {
        let _ = std::fs::File::open("fifo-a");  // blocks: nobody writes
        return;
    }
    let a = unsafe { mkfifo(b"fifo-a\0".as_ptr(), 0o666) };
    let b = unsafe { mkfifo(b"/tmp/fifo-b\0".as_ptr(), 0o666) };
    let s = UnixListener::bind("sock-a").is_ok();
    let t = UnixListener::bind("/tmp/sock-b").is_ok();
    let child = std::process::Command::new("/proc/self/exe").arg("reader-__TOKEN__").spawn();
    std::thread::sleep(std::time::Duration::from_millis(200));
    println!("fifos {} {} sockets {} {} reader {}", a, b, s, t, child.is_ok());
}
