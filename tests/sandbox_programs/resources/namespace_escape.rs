// Tries to become root of its own user namespace (CAP_NET_RAW there gives AF_PACKET rings whose kernel
// memory no cgroup counts), by unshare, clone and clone3, to join another namespace by setns, and to open an
// AF_PACKET socket directly; threads and child processes must still work (glibc falls back from clone3).
extern "C" {
    fn unshare(flags: i32) -> i32;
    fn syscall(n: i64, ...) -> i64;
    fn socket(d: i32, t: i32, p: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn _exit(code: i32) -> !;
}
const CLONE_NEWUSER: i64 = 0x10000000;
const CLONE_NEWNET: i64 = 0x40000000;
const SIGCHLD: i64 = 17;

fn report(what: &str, ok: bool) {
    if ok {
        println!("{}: ESCAPED", what);
    } else {
        println!("{}: blocked ({})", what, std::io::Error::last_os_error());
    }
}

fn main() {
    // the ordinary machinery first: a thread and a child process
    let t = std::thread::spawn(|| 21 * 2).join().unwrap();
    let child = std::process::Command::new("/bin/true").status().map(|s| s.success()).unwrap_or(false);
    println!("thread {} spawn {}", t, child);
    // clone with CLONE_NEWUSER: the child exits at once (never returns into Rust code)
    let pid = unsafe { syscall(56, CLONE_NEWUSER | SIGCHLD, 0i64, 0i64, 0i64, 0i64) };
    if pid == 0 {
        unsafe { _exit(0) };
    }
    if pid > 0 {
        let mut st = 0;
        unsafe { waitpid(pid as i32, &mut st, 0) };
    }
    report("clone", pid > 0);
    let mut args = [0u64; 11]; // struct clone_args: flags first, exit_signal at 4
    args[0] = CLONE_NEWUSER as u64;
    args[4] = SIGCHLD as u64;
    let pid3 = unsafe { syscall(435, args.as_mut_ptr(), 88i64) };
    if pid3 == 0 {
        unsafe { _exit(0) };
    }
    if pid3 > 0 {
        let mut st = 0;
        unsafe { waitpid(pid3 as i32, &mut st, 0) };
    }
    report("clone3", pid3 > 0);
    let fd = std::fs::File::open("/proc/self/ns/net").map(|f| std::os::fd::IntoRawFd::into_raw_fd(f)).unwrap_or(-1);
    report("setns", unsafe { syscall(308, fd as i64, 0i64) } == 0);
    report("packet", unsafe { socket(17, 3, 0x0300) } >= 0);
    let shared = unsafe { unshare((CLONE_NEWUSER | CLONE_NEWNET) as i32) } == 0;
    report("unshare", shared);
    if shared {
        // root of its own user and network namespace: AF_PACKET now works
        report("packet in userns", unsafe { socket(17, 3, 0x0300) } >= 0);
    }
}
