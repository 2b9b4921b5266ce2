// Fills socketpairs, then sends them over another socket and closes its own copies: the buffers stay
// in flight, held by the kernel, outside the open-files limit. Reports what it holds.
use std::io::Write;
extern "C" {
    fn socketpair(d: i32, t: i32, p: i32, sv: *mut i32) -> i32;
    fn send(fd: i32, b: *const u8, n: usize, f: i32) -> isize;
    fn sendmsg(fd: i32, msg: *const MsgHdr, f: i32) -> isize;
    fn close(fd: i32) -> i32;
}
#[repr(C)] struct IoVec { base: *const u8, len: usize }
#[repr(C)] struct MsgHdr { name: *const u8, namelen: u32, iov: *const IoVec, iovlen: usize, control: *const u8, controllen: usize, flags: i32 }

fn main() {
    let mut carrier = [0i32; 2];
    unsafe { socketpair(1, 1, 0, carrier.as_mut_ptr()) };
    let buf = vec![1u8; 65536];
    let mut held = 0usize;
    let mut last = 0usize;
    for _ in 0..20000 {
        let mut sv = [0i32; 2];
        if unsafe { socketpair(1, 1, 0, sv.as_mut_ptr()) } != 0 { break; }
        loop {
            let n = unsafe { send(sv[0], buf.as_ptr(), buf.len(), 0x40) };
            if n <= 0 { break; }
            held += n as usize;
        }
        // cmsg: len(16+8) level SOL_SOCKET(1) type SCM_RIGHTS(1) two fds
        let mut cmsg = [0u8; 24];
        cmsg[0..8].copy_from_slice(&24u64.to_ne_bytes());
        cmsg[8..12].copy_from_slice(&1i32.to_ne_bytes());
        cmsg[12..16].copy_from_slice(&1i32.to_ne_bytes());
        cmsg[16..20].copy_from_slice(&sv[0].to_ne_bytes());
        cmsg[20..24].copy_from_slice(&sv[1].to_ne_bytes());
        let iov = IoVec { base: b"x".as_ptr(), len: 1 };
        let msg = MsgHdr { name: std::ptr::null(), namelen: 0, iov: &iov, iovlen: 1, control: cmsg.as_ptr(), controllen: 24, flags: 0 };
        let sent = unsafe { sendmsg(carrier[0], &msg, 0x40) };
        unsafe { close(sv[0]); close(sv[1]); }
        if sent < 0 { break; }
        if held >> 20 >= last + 8 { last = held >> 20; println!("held={} MiB", last); std::io::stdout().flush().ok(); }
    }
    println!("held={} MiB", held >> 20);
    println!("done");
}
