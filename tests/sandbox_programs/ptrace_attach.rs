// Attaches to other processes with ptrace (to read their memory) and reads /proc/PID/mem.
extern "C" {
    fn ptrace(req: i64, pid: i32, addr: usize, data: usize) -> i64;
}
const PTRACE_ATTACH: i64 = 16;

fn main() {
    for pid in 1..200 {
        if pid as u32 == std::process::id() { continue; }
        if unsafe { ptrace(PTRACE_ATTACH, pid, 0, 0) } == 0 {
            println!("ESCAPED: attached to {}", pid);
        }
        if std::fs::read(format!("/proc/{}/maps", pid)).map(|b| !b.is_empty()).unwrap_or(false) {
            println!("ESCAPED: read maps of {}", pid);
        }
    }
    println!("done");
}
