// Starts a sleeper in a new process group (escaping killpg) and then spins until the timeout.
use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {
    let child = Command::new("sleep").arg("__TOKEN__").process_group(0).spawn().expect("spawn");
    println!("spawned {}", child.id());
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
