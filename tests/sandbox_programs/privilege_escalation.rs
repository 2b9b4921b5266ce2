// Tries to become root again: setuid(0), setgid(0), and to change its uid to another job's.
extern "C" {
    fn setuid(uid: u32) -> i32;
    fn setgid(gid: u32) -> i32;
    fn getuid() -> u32;
    fn geteuid() -> u32;
}

fn main() {
    unsafe {
        let me = getuid();
        println!("uid {} euid {}", me, geteuid());
        if setgid(0) == 0 { println!("ESCAPED: setgid(0)"); }
        if setuid(0) == 0 { println!("ESCAPED: setuid(0)"); }
        if setuid(me + 1) == 0 { println!("ESCAPED: became uid {}", me + 1); }
        if getuid() == 0 || geteuid() == 0 { println!("ESCAPED: root"); }
    }
    println!("still uid");
}
