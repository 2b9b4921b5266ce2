// 3,000 nested blocks: rustc overflows its stack (the answer's fault, not the sandbox's).
fn main() __NESTED__
