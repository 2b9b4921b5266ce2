// Makes its work dir unremovable for its own uid (000 files, a read-only dir tree) and
// tries to chmod/chown things outside.
use std::os::unix::fs::PermissionsExt;

fn main() {
    std::fs::create_dir_all("deep/deeper/deepest").unwrap();
    std::fs::write("deep/deeper/deepest/f", b"x").unwrap();
    for p in ["deep/deeper/deepest/f", "deep/deeper/deepest", "deep/deeper", "deep"] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    for outside in ["/usr/bin/sh", "/", "/sysroot/bin/rustc", "__REPO__"] {
        if std::fs::set_permissions(outside, std::fs::Permissions::from_mode(0o777)).is_ok() {
            println!("ESCAPED: chmod {}", outside);
        }
    }
    println!("locked");
}
