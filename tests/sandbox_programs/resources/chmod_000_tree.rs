// A tree of files whose directories it then closes (0000, 0500), deepest first, and the job directory too.
use std::os::unix::fs::PermissionsExt;

fn main() {
    let mut dirs = vec![];
    for a in 0..5 {
        for b in 0..5 {
            let d = format!("t{}/u{}", a, b);
            std::fs::create_dir_all(&d).unwrap();
            for f in 0..4 { std::fs::write(format!("{}/f{}", d, f), b"x").unwrap(); }
            dirs.push(d);
        }
        dirs.push(format!("t{}", a));
    }
    for (i, d) in dirs.iter().enumerate() {
        let mode = if i % 2 == 0 { 0o000 } else { 0o500 };
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).ok();
    }
    std::fs::set_permissions(".", std::fs::Permissions::from_mode(0o500)).ok();
    println!("closed {}", dirs.len());
}
