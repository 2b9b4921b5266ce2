// Leaves symlinks (and a 000 directory) in its work dir pointing at host files, hoping the
// evaluator follows them when it cleans up.
use std::os::unix::fs::{symlink, PermissionsExt};

fn main() {
    let _ = symlink("__CANARY_FILE__", "canary_link");
    let _ = symlink("__REPO__", "repo_link");
    let _ = symlink("/", "root_link");
    std::fs::create_dir("locked").unwrap();
    std::fs::write("locked/f", b"x").unwrap();
    std::fs::set_permissions("locked", std::fs::Permissions::from_mode(0o000)).unwrap();
    println!("traps set");
}
