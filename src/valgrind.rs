//! Whether this process runs under valgrind (its `RUNNING_ON_VALGRIND` client request).
//!
//! Model: valgrind recognises a "client request", a fixed sequence of rotations of one register
//! by 128 bits in all (so a no-op on real hardware) followed by `xchg rbx, rbx`, and replaces
//! the result register with its answer; natively the register keeps the default, 0. The
//! request asked is `RUNNING_ON_VALGRIND` (0x1001), answered by the number of valgrinds the
//! process runs under. Only x86-64 asks; elsewhere the answer is "no".
//!
//! Used by the stack pool, which reserves far less address space under valgrind (see
//! `stack::region_bytes`). The answer is asked once and cached.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
fn ask() -> u64 {
    /// `VG_USERREQ__RUNNING_ON_VALGRIND` in valgrind.h's request numbering.
    const RUNNING_ON_VALGRIND: u64 = 0x1001;
    let args: [u64; 6] = [RUNNING_ON_VALGRIND, 0, 0, 0, 0, 0];
    let answer: u64;
    // SAFETY: rotating rdi by 3 + 13 + 61 + 51 = 128 bits leaves it unchanged and
    // `xchg rbx, rbx` changes nothing, so natively this only reads `args` (never written);
    // under valgrind the sequence is the client-request marker, which reads the six words at
    // rax and writes its answer to rdx, touching no other state of ours.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") 0u64 => answer,
            in("rax") args.as_ptr(),
            inout("rdi") 0u64 => _,
            options(nostack, readonly, preserves_flags),
        );
    }
    answer
}

#[cfg(not(target_arch = "x86_64"))]
fn ask() -> u64 {
    0
}

/// True when this process runs under valgrind.
pub fn running() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| ask() != 0)
}
