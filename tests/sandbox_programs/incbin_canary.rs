// Pulls a host file into the binary through the assembler (.incbin), bypassing include_str!.
use std::arch::global_asm;

global_asm!(
    ".section .rodata",
    ".global CANARY_BYTES",
    "CANARY_BYTES:",
    ".incbin \"__CANARY_FILE__\"",
    ".byte 0",
);

extern "C" {
    static CANARY_BYTES: u8;
}

fn main() {
    let p = unsafe { &CANARY_BYTES as *const u8 };
    let mut out = Vec::new();
    for i in 0..200 {
        let b = unsafe { *p.add(i) };
        if b == 0 { break; }
        out.push(b);
    }
    println!("{}", String::from_utf8_lossy(&out));
}
