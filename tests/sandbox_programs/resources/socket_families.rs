// The seccomp filter's allow-list of socket families: AF_UNIX, AF_INET and AF_INET6 open; netlink, AF_ALG, AF_KEY,
// AF_XDP, AF_PACKET, AF_VSOCK and an unknown family are refused, also with high bits set in the 64-bit argument
// (the kernel truncates the family to an int: 0x1_0000_0010 is AF_NETLINK to it).
extern "C" {
    fn syscall(n: i64, a: i64, b: i64, c: i64, d: i64) -> i64;
    fn close(fd: i32) -> i32;
}
const SYS_SOCKET: i64 = 41;
const SYS_SOCKETPAIR: i64 = 53;

fn try_socket(name: &str, family: i64, kind: i64) {
    let fd = unsafe { syscall(SYS_SOCKET, family, kind, 0, 0) };
    if fd >= 0 {
        println!("{}: opened", name);
        unsafe { close(fd as i32) };
    } else {
        println!("{}: refused {}", name, std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
}

fn main() {
    try_socket("unix", 1, 1);
    try_socket("inet", 2, 2);
    try_socket("inet6", 10, 2);
    for (name, family, kind) in [("netlink", 16, 3), ("packet", 17, 3), ("alg", 38, 5), ("key", 15, 3),
                                 ("xdp", 44, 3), ("vsock", 40, 1), ("unknown", 200, 1),
                                 ("netlink_high_bits", (1i64 << 32) | 16, 3)] {
        try_socket(name, family, kind);
    }
    let mut fds = [0i32; 2];
    let r = unsafe { syscall(SYS_SOCKETPAIR, 16, 3, 0, fds.as_mut_ptr() as i64) };
    println!("netlink pair: {}", if r >= 0 { "opened".to_string() } else {
        format!("refused {}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) });
    let r = unsafe { syscall(SYS_SOCKETPAIR, 1, 1, 0, fds.as_mut_ptr() as i64) };
    println!("unix pair: {}", if r == 0 { "opened" } else { "refused" });
}
