// Makes its own user + mount namespace (where it is "root") and tries to get at the host's
// files again: mount the host's /proc, remount / read-write, unmount the job's view.
use std::ffi::CString;

extern "C" {
    fn unshare(flags: i32) -> i32;
    fn mount(src: *const i8, target: *const i8, fstype: *const i8, flags: u64, data: *const i8) -> i32;
    fn umount2(target: *const i8, flags: i32) -> i32;
}
const CLONE_NEWUSER: i32 = 0x10000000;
const CLONE_NEWNS: i32 = 0x00020000;
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;

fn main() {
    let c = |s: &str| CString::new(s).unwrap();
    unsafe {
        let r = unshare(CLONE_NEWUSER | CLONE_NEWNS);
        println!("unshare -> {}", r);
        if r == 0 {
            let root = c("/");
            if mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), MS_REMOUNT | MS_BIND, std::ptr::null()) == 0 {
                println!("remounted / (own namespace only)");
            }
            let job = c("/job");
            if umount2(job.as_ptr(), 2) == 0 { println!("unmounted /job (own namespace only)"); }
        }
    }
    for path in ["/.old/etc/passwd", "/old_root/etc/passwd", "/etc/passwd", "__REPO__/pyproject.toml"] {
        if std::fs::read(path).is_ok() {
            println!("ESCAPED: read {}", path);
        }
    }
    println!("done");
}
