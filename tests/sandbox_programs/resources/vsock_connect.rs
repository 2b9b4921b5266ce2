// Connects over AF_VSOCK to the host (cid 2) and to the local cid (1).
extern "C" { fn socket(d: i32, t: i32, p: i32) -> i32; fn connect(fd: i32, a: *const u8, l: u32) -> i32; }

fn main() {
    for cid in [1u32, 2u32] {
        let fd = unsafe { socket(40, 1, 0) };
        if fd < 0 {
            println!("blocked: {}", std::io::Error::last_os_error());
            continue;
        }
        let mut addr = [0u8; 16];
        addr[0..2].copy_from_slice(&40u16.to_ne_bytes());
        addr[4..8].copy_from_slice(&22u32.to_ne_bytes());
        addr[8..12].copy_from_slice(&cid.to_ne_bytes());
        if unsafe { connect(fd, addr.as_ptr(), 16) } == 0 {
            println!("CONNECTED to cid {}", cid);
        } else {
            println!("socket made, connect refused: {}", std::io::Error::last_os_error());
        }
    }
}
