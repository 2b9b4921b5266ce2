// Starts a child in its own session that ignores SIGTERM and SIGHUP and sleeps: it must not outlive the job.
extern "C" { fn setsid() -> i32; fn signal(s: i32, h: usize) -> usize; }

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 {
        unsafe { setsid(); signal(15, 1); signal(1, 1); }
        let grandchild = std::process::Command::new("/proc/self/exe").arg("x").arg("y").spawn();
        if args.len() > 2 { std::thread::sleep(std::time::Duration::from_secs(600)); return; }
        drop(grandchild);
        std::thread::sleep(std::time::Duration::from_secs(600));
        return;
    }
    let c = std::process::Command::new("/proc/self/exe").arg("survivor-__TOKEN__").spawn();
    std::thread::sleep(std::time::Duration::from_millis(300));
    println!("left a survivor: {}", c.is_ok());
}
