// Binds an AF_VSOCK port: vsock is outside the network namespace, so a bind would be seen by the host.
extern "C" { fn socket(d: i32, t: i32, p: i32) -> i32; fn bind(fd: i32, a: *const u8, l: u32) -> i32; fn listen(fd: i32, n: i32) -> i32; }

fn main() {
    let fd = unsafe { socket(40, 1, 0) };
    if fd < 0 {
        println!("blocked: {}", std::io::Error::last_os_error());
        return;
    }
    let mut addr = [0u8; 16];
    addr[0..2].copy_from_slice(&40u16.to_ne_bytes());
    addr[4..8].copy_from_slice(&(__PORT__ as u32).to_ne_bytes());
    addr[8..12].copy_from_slice(&u32::MAX.to_ne_bytes()); // VMADDR_CID_ANY
    if unsafe { bind(fd, addr.as_ptr(), 16) } == 0 && unsafe { listen(fd, 1) } == 0 {
        println!("BOUND vsock port __PORT__");
        std::thread::sleep(std::time::Duration::from_secs(2));
    } else {
        println!("socket made, bind refused: {}", std::io::Error::last_os_error());
    }
}
