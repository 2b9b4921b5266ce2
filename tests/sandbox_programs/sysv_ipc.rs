// Lists and attaches System V shared memory of the host (another job's or the evaluator's).
extern "C" {
    fn shmget(key: i32, size: usize, flags: i32) -> i32;
}

fn main() {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    let lines = text.lines().count();
    println!("shm lines: {}", lines);
    if lines > 1 {
        println!("ESCAPED: sees host shm segments");
    }
    let id = unsafe { shmget(__SHMKEY__, 0, 0) };
    if id >= 0 {
        println!("ESCAPED: opened host shm key");
    } else {
        println!("no host shm");
    }
}
