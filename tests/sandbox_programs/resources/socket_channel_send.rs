// Sender of a socket channel between concurrent jobs: an abstract unix socket and a datagram one, listening.
use std::os::unix::net::UnixListener;
extern "C" { fn socket(d: i32, t: i32, p: i32) -> i32; fn bind(fd: i32, a: *const u8, l: u32) -> i32; }

fn main() {
    let mut addr = vec![0u8; 2];
    addr[0..2].copy_from_slice(&1u16.to_ne_bytes());
    addr.push(0);
    addr.extend_from_slice(b"rc-chan-__TOKEN__");
    let fd = unsafe { socket(1, 1, 0) };
    let ok = fd >= 0 && unsafe { bind(fd, addr.as_ptr(), addr.len() as u32) } == 0;
    println!("abstract bound: {}", ok);
    let path = UnixListener::bind("/tmp/rc-chan-__TOKEN__.sock");
    println!("path bound: {}", path.is_ok());
    extern "C" { fn listen(fd: i32, n: i32) -> i32; }
    if ok { unsafe { listen(fd, 8) }; }
    std::thread::sleep(std::time::Duration::from_secs(6));
    println!("released");
}
