// Forks sleeping children until fork fails, then reports how many it got.
extern "C" {
    fn fork() -> i32;
}

fn main() {
    let mut n = 0u32;
    loop {
        let pid = unsafe { fork() };
        if pid == 0 {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        if pid < 0 || n >= 5000 {
            println!("forks={}", n);
            return;
        }
        n += 1;
    }
}
