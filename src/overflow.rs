//! A clear message when a greenlet overflows its native stack.
//!
//! Running into a stack's guard page raises `SIGSEGV` (or `SIGBUS`). Nothing can recover
//! from that inside a Python process, but the user deserves better than a bare segmentation
//! fault: the handler installed here recognises a fault inside one of our guard pages, writes
//! a message naming the stack size and the setting that changes it, and then hands the
//! signal on to whatever handler was there before (faulthandler's traceback dump, pytest's,
//! or the default action that ends the process).
//!
//! The handler runs on an alternate signal stack (the faulting stack has no room left), so
//! every thread that runs greenlets gets one ([`ensure_alt_stack`]). It is async-signal-safe:
//! it reads the stack layer's lock-free region table and calls `write(2)` and `sigaction`.
//! When faulthandler was enabled after us, it catches the fault first and re-raises it once
//! its traceback is out; the fault is then recognised from the kernel's signal frame (see
//! [`reraised_fault_addr`]) and the message follows the traceback.

use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::stack;

/// Size of the alternate signal stack each greenlet thread gets.
const ALT_STACK_SIZE: usize = 64 * 1024;

static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The actions installed before ours, for SIGSEGV and SIGBUS: written once, before our
/// handler is installed, and only read after (by the handler, which may not take locks).
static mut PREVIOUS_FOR_HANDLER: [libc::sigaction; 2] = [unsafe_zeroed(), unsafe_zeroed()];

const fn unsafe_zeroed() -> libc::sigaction {
    // SAFETY: sigaction is a plain C struct for which all-zero is valid (SIG_DFL, no flags).
    unsafe { std::mem::MaybeUninit::zeroed().assume_init() }
}

fn signal_index(sig: libc::c_int) -> usize {
    if sig == libc::SIGBUS {
        1
    } else {
        0
    }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(2, bytes.as_ptr() as *const libc::c_void, bytes.len());
    }
}

/// Formats `n` in decimal into `buf`, returning the digits (async-signal-safe).
fn decimal(mut n: usize, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Bytes of the alternate stack the re-raise scan looks at, from its top down (the kernel's
/// signal frame for the first fault sits at the top, under the saved FPU state).
const SCAN_BYTES: usize = 64 * 1024;
/// Where the scan copies them: one fault is handled at a time (`SCAN_BUSY`).
static mut SCAN_BUF: [usize; SCAN_BYTES / 8] = [0; SCAN_BYTES / 8];
static SCAN_BUSY: AtomicBool = AtomicBool::new(false);

/// The faulting address of a fault that another handler caught first and then re-raised.
///
/// faulthandler, enabled after corolet was imported, sits on top of our handler: it dumps its
/// traceback, puts our handler back and calls `raise()`, so the siginfo we get carries no
/// address. The kernel's signal frame for the real fault is still on this thread's alternate
/// stack, above the frames of the handler that re-raised; its saved machine context (x86-64
/// `sigcontext`) holds the trap number, the faulting address (`cr2`) and the stack pointer.
/// A page fault (trap 14) at one of our guard pages, taken with the stack pointer next to it,
/// is a greenlet's stack overflow. (The kernel writes a siginfo into the frame only for
/// handlers that asked for one, and faulthandler's does not.)
///
/// Reading: the words between this frame and the top of the alternate stack belong to other
/// frames, with gaps between them (alignment, red zones) that no frame owns. They are not read
/// directly but copied by the kernel (`process_vm_readv` on this process, which fails on what
/// is not mapped instead of faulting) into a static buffer, and scanned there. Only where that
/// system call is forbidden (a seccomp filter) are the words read in place, as mapped memory of
/// this thread's own alternate stack. Async-signal-safe: system calls and the static buffer,
/// taken by one handler at a time.
#[cfg(target_arch = "x86_64")]
fn reraised_fault_addr() -> Option<usize> {
    /// Words of `struct sigcontext` from the stack pointer to the trap number, and to `cr2`.
    const RSP_TO_TRAPNO: usize = 5;
    const TRAPNO_TO_CR2: usize = 2;
    const PAGE_FAULT: usize = 14;
    // SAFETY: querying this thread's alternate stack into a valid struct.
    let alt = unsafe {
        let mut alt: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(ptr::null(), &mut alt) != 0 {
            return None;
        }
        alt
    };
    let low = alt.ss_sp as usize;
    let high = (low + alt.ss_size) & !7;
    let here = ptr::addr_of!(alt) as usize;
    if alt.ss_flags & libc::SS_ONSTACK == 0 || here < low || here >= high {
        return None;
    }
    // From just above this frame to the top, at most SCAN_BYTES of it (the top part).
    let start = ((here + 7) & !7).max(high.saturating_sub(SCAN_BYTES));
    let len = high.checked_sub(start)?;
    if SCAN_BUSY.swap(true, Ordering::Acquire) {
        return None; // another thread's fault is being handled: the process ends anyway
    }
    // SAFETY: SCAN_BUSY gives this handler the buffer alone; len <= SCAN_BYTES.
    let buf = unsafe { &mut *ptr::addr_of_mut!(SCAN_BUF) };
    let words = &mut buf[..len / 8];
    let local = libc::iovec {
        iov_base: words.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: start as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the kernel copies from this process's own memory into `words` (len bytes).
    let copied = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if copied < 0 {
        // Forbidden here: read the same words in place instead.
        for (i, w) in words.iter_mut().enumerate() {
            // SAFETY: start + 8 * i lies in [here, high), this thread's mapped alternate stack.
            *w = unsafe { ptr::read_volatile((start + 8 * i) as *const usize) };
        }
    }
    let copied = if copied < 0 { len } else { copied as usize };
    let words = &words[..copied / 8];
    let found = (RSP_TO_TRAPNO..words.len().saturating_sub(TRAPNO_TO_CR2)).find_map(|t| {
        if words[t] != PAGE_FAULT {
            return None;
        }
        let cr2 = words[t + TRAPNO_TO_CR2];
        let rsp = words[t - RSP_TO_TRAPNO];
        let size = stack::guard_page_stack_size(cr2)?;
        // The stack pointer is at the guard page too (just above it, or already in it).
        (rsp.abs_diff(cr2) < size).then_some(cr2)
    });
    SCAN_BUSY.store(false, Ordering::Release);
    found
}

#[cfg(not(target_arch = "x86_64"))]
fn reraised_fault_addr() -> Option<usize> {
    None
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A code <= 0: sent by a process (raise, kill), not by the fault itself.
    let addr = if code > 0 {
        Some(addr)
    } else {
        reraised_fault_addr()
    };
    if let Some(size) = addr.and_then(stack::guard_page_stack_size) {
        let mut buf = [0u8; 24];
        write_stderr(b"\nFatal: a greenlet overflowed its native stack (");
        write_stderr(decimal(size / 1024, &mut buf));
        write_stderr(
            b" KiB) and hit its guard page.\nRecursion went deeper than the stack allows: \
              raise the stack size with corolet.stack_size(bytes) before the greenlet is \
              created, or lower sys.setrecursionlimit().\n",
        );
    }
    // Hand the signal on: to the previous handler if there was one, else to the default
    // action (restored, then the faulting instruction runs again and faults for real).
    // SAFETY: written once before our handler was installed, read-only since.
    let previous = unsafe { (*ptr::addr_of!(PREVIOUS_FOR_HANDLER))[signal_index(sig)] };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: restoring the default action for this signal.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, ptr::null_mut());
        }
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler expects exactly these arguments.
        unsafe {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, context);
        }
    } else {
        // SAFETY: a plain handler taking the signal number.
        unsafe {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

/// Installs the fault handler (once per process).
pub fn install() {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut previous = [unsafe_zeroed(), unsafe_zeroed()];
    // SAFETY: querying the current actions into valid structs.
    unsafe {
        libc::sigaction(libc::SIGSEGV, ptr::null(), &mut previous[0]);
        libc::sigaction(libc::SIGBUS, ptr::null(), &mut previous[1]);
        *ptr::addr_of_mut!(PREVIOUS_FOR_HANDLER) = previous;
    }
    // SAFETY: installing a handler that only does async-signal-safe work.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut());
        libc::sigaction(libc::SIGBUS, &action, ptr::null_mut());
    }
}

/// This thread's alternate signal stack, if we made it; unmapped when the thread exits.
struct AltStack(std::cell::Cell<usize>);

impl Drop for AltStack {
    fn drop(&mut self) {
        let mem = self.0.replace(0);
        if mem == 0 {
            return;
        }
        // SAFETY: disabling this thread's alternate stack (the thread is exiting and runs no
        // more signal handlers of ours), then unmapping the stack we mapped for it.
        unsafe {
            let off = libc::stack_t {
                ss_sp: ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&off, ptr::null_mut());
            libc::munmap(mem as *mut libc::c_void, ALT_STACK_SIZE);
        }
    }
}

thread_local! {
    static ALT_STACK: AltStack = const { AltStack(std::cell::Cell::new(0)) };
}

/// Gives the calling thread an alternate signal stack if it has none, so the handler can run
/// when the thread's current stack is exhausted.
pub fn ensure_alt_stack() {
    // SAFETY: querying and setting this thread's alternate stack with valid structs; the
    // new stack is a fresh private mapping, unmapped only when the thread exits.
    unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(ptr::null(), &mut current) != 0 {
            return;
        }
        if current.ss_flags & libc::SS_DISABLE == 0 {
            return;
        }
        let mem = libc::mmap(
            ptr::null_mut(),
            ALT_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return;
        }
        let alt = libc::stack_t {
            ss_sp: mem,
            ss_flags: 0,
            ss_size: ALT_STACK_SIZE,
        };
        if libc::sigaltstack(&alt, ptr::null_mut()) != 0
            || ALT_STACK.try_with(|a| a.0.set(mem as usize)).is_err()
        {
            libc::munmap(mem, ALT_STACK_SIZE);
        }
    }
}
