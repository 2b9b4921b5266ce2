// Classic fork bomb: every process forks forever. Bounded by RLIMIT_NPROC and the timeout.
extern "C" {
    fn fork() -> i32;
}

fn main() {
    loop {
        unsafe {
            fork();
        }
    }
}
