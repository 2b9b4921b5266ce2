// Receiver of the IPC channel: for six seconds, looks for the sender's segment, semaphore, queue and files.
extern "C" {
    fn shmget(key: i32, size: usize, flags: i32) -> i32;
    fn semget(key: i32, n: i32, flags: i32) -> i32;
    fn mq_open(name: *const u8, flags: i32, ...) -> i32;
}

fn main() {
    let start = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while start.elapsed().as_secs() < 6 {
        if unsafe { shmget(__SHMKEY__, 0, 0) } >= 0 { seen.insert("sysv shm"); }
        if unsafe { semget(__SHMKEY__, 0, 0) } >= 0 { seen.insert("sysv sem"); }
        if unsafe { mq_open(b"/rc-__TOKEN__\0".as_ptr(), 0) } >= 0 { seen.insert("mqueue"); }
        if std::path::Path::new("/tmp/rc-ipc-__TOKEN__").exists() { seen.insert("tmp file"); }
        if std::path::Path::new("/dev/shm/rc-ipc-__TOKEN__").exists() { seen.insert("devshm file"); }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for s in &seen { println!("CHANNEL {}", s); }
    println!("listened");
}
