// Spawns sleeping threads (small stacks) until the OS refuses, then reports the count.
use std::thread;
use std::time::Duration;

fn main() {
    let mut handles = Vec::new();
    loop {
        let spawned = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| loop {
                thread::sleep(Duration::from_secs(1));
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => break,
        }
        if handles.len() >= 5000 {
            break;
        }
    }
    println!("threads={}", handles.len());
    std::process::exit(0);
}
