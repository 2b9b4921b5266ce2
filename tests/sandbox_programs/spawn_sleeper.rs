// Starts a child that sleeps forever, then exits: the child must be killed with the group.
use std::process::Command;

fn main() {
    let child = Command::new("sleep").arg("__TOKEN__").spawn().expect("spawn sleep");
    println!("spawned {}", child.id());
}
