// Sender of an IPC channel between concurrent jobs: System V shared memory and a semaphore with a fixed
// key, a POSIX message queue, files in /tmp and /dev/shm.
extern "C" {
    fn shmget(key: i32, size: usize, flags: i32) -> i32;
    fn semget(key: i32, n: i32, flags: i32) -> i32;
    fn mq_open(name: *const u8, flags: i32, ...) -> i32;
}

fn main() {
    let shm = unsafe { shmget(__SHMKEY__, 4096, 0o1000 | 0o666) };
    let sem = unsafe { semget(__SHMKEY__, 1, 0o1000 | 0o666) };
    let mq = unsafe { mq_open(b"/rc-__TOKEN__\0".as_ptr(), 0o100 | 2, 0o666u32, std::ptr::null::<u8>()) };
    let a = std::fs::write("/tmp/rc-ipc-__TOKEN__", b"x").is_ok();
    let b = std::fs::write("/dev/shm/rc-ipc-__TOKEN__", b"x").is_ok();
    println!("shm {} sem {} mq {} tmp {} devshm {}", shm >= 0, sem >= 0, mq >= 0, a, b);
    std::thread::sleep(std::time::Duration::from_secs(6));
    println!("released");
}
