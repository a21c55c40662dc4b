//! A direct KVM check: ioctls on `/dev/kvm` run a tiny guest and time it, in well under a second.
//!
//! [`check`] answers [`KvmCheck`]: it opens the device, requires API version 12, creates a VM
//! with one page of memory holding a 16-bit real-mode program, creates a vCPU, sets its
//! registers and runs it. The program counts a loop of [`LOOP_ITERATIONS`] down, writes `0x42`
//! to port `0x10` (a `KVM_EXIT_IO`) and halts (`KVM_EXIT_HLT`). A vCPU that runs natively does
//! that in about 10 ms; one that hangs, or whose instructions KVM emulates one by one (a nested
//! or PVM setup: it boots a kernel so slowly that QEMU's boot probe times out), misses the
//! deadline and the answer is [`KvmCheck::TooSlow`]. The loop is what tells "KVM executes guest
//! code" from "KVM executes guest code at hardware speed": a lone `hlt` passes on such hosts.
//!
//! **Why a forked child, not a thread.** Where KVM emulates, `KVM_RUN` does not return for
//! tens of seconds and keeps a core busy all that time; a thread cannot be stopped from outside,
//! so an abandoned one would burn a core for the rest of the build (and re-executing the current
//! binary is not an option for a library). The check runs in a `fork`ed child that makes raw
//! system calls only (no allocation, no locks, so forking a multi-threaded process is sound),
//! reports the step that failed in its exit code, and gets `SIGKILL` at the deadline.
//!
//! ```no_run
//! use firebuild_vmm::kvm::{self, KvmCheck};
//!
//! let answer = kvm::check(kvm::KVM_DEVICE.as_ref(), kvm::CHECK_DEADLINE);
//! if answer != KvmCheck::Works {
//!     println!("using TCG: {answer}");
//! }
//! ```

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The default deadline of [`check`]: 50 times what a loaded two-core host needs where KVM runs
/// natively, and the most the check costs where it does not.
pub const CHECK_DEADLINE: Duration = Duration::from_millis(500);

/// Iterations of the test guest's loop (two instructions each): about 10 ms on a vCPU that runs
/// natively. Missing a 0.5 s deadline means fewer than 40 million guest instructions a second,
/// slower than QEMU's TCG emulation.
pub const LOOP_ITERATIONS: u32 = 10_000_000;

/// How often the parent looks whether the child has finished.
const POLL: Duration = Duration::from_millis(2);

/// How long the parent waits for a killed child to be reaped before leaving it.
const REAP_TIMEOUT: Duration = Duration::from_secs(1);

/// Guest-physical address of the test program (and of its one page of memory).
const GUEST_ADDR: u64 = 0x1000;
/// The port and byte the test program writes once its loop is done.
const PORT: u8 = 0x10;
const MAGIC: u8 = 0x42;

/// The test program, 16-bit real mode.
const GUEST_CODE: [u8; 15] = {
    let n = LOOP_ITERATIONS.to_le_bytes();
    [
        0x66, 0xb9, n[0], n[1], n[2], n[3], // mov ecx, LOOP_ITERATIONS
        0x66, 0x49, // loop: dec ecx
        0x75, 0xfc, // jnz loop (-4)
        0xb0, MAGIC, // mov al, MAGIC
        0xe6, PORT, // out PORT, al
        0xf4, // hlt
    ]
};

/// The answer of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvmCheck {
    /// The vCPU ran the test program to its end before the deadline.
    Works,
    /// The device does not exist.
    NoDevice,
    /// A step failed; the ioctls before it worked.
    Failed(Step),
    /// The test program had not finished at the deadline: KVM hangs, or emulates the guest.
    TooSlow(Duration),
    /// The check could not run or its child ended abnormally (fork or wait failed, a signal).
    NotRun,
}

impl KvmCheck {
    /// Whether KVM can run guests at hardware speed.
    pub fn works(self) -> bool {
        self == Self::Works
    }
}

impl fmt::Display for KvmCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Works => f.write_str("kvm runs guest code natively"),
            Self::NoDevice => write!(f, "no {KVM_DEVICE}"),
            Self::Failed(step) => write!(f, "{step} failed"),
            Self::TooSlow(deadline) => write!(
                f,
                "a {LOOP_ITERATIONS}-iteration guest loop did not finish in {deadline:?} \
                 (kvm hangs or emulates)"
            ),
            Self::NotRun => f.write_str("the kvm check could not run"),
        }
    }
}

/// A step of [`check`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Opening the device read-write (a permission problem shows here).
    Open,
    /// `KVM_GET_API_VERSION`, which must answer 12 (also fails on a device that is not KVM).
    ApiVersion,
    /// `KVM_CREATE_VM`.
    CreateVm,
    /// Mapping the guest's page of memory.
    GuestMemory,
    /// `KVM_SET_USER_MEMORY_REGION`.
    MemoryRegion,
    /// `KVM_CREATE_VCPU`.
    CreateVcpu,
    /// `KVM_GET_VCPU_MMAP_SIZE` and mapping the vCPU's `kvm_run` area.
    MapRun,
    /// `KVM_GET_SREGS` / `KVM_SET_SREGS` (code segment at 0).
    Sregs,
    /// `KVM_SET_REGS` (instruction pointer at the program).
    Regs,
    /// `KVM_RUN` returned an error.
    Run,
    /// `KVM_RUN` stopped for something other than the program's `out` and `hlt`.
    Exit,
}

impl Step {
    const ALL: [Step; 11] = [
        Step::Open,
        Step::ApiVersion,
        Step::CreateVm,
        Step::GuestMemory,
        Step::MemoryRegion,
        Step::CreateVcpu,
        Step::MapRun,
        Step::Sregs,
        Step::Regs,
        Step::Run,
        Step::Exit,
    ];

    /// The child's exit code for a failure at this step (0 is success).
    fn code(self) -> i32 {
        10 + self as i32
    }

    fn from_code(code: i32) -> Option<Step> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Open => "opening the kvm device",
            Step::ApiVersion => "KVM_GET_API_VERSION (want 12)",
            Step::CreateVm => "KVM_CREATE_VM",
            Step::GuestMemory => "mapping guest memory",
            Step::MemoryRegion => "KVM_SET_USER_MEMORY_REGION",
            Step::CreateVcpu => "KVM_CREATE_VCPU",
            Step::MapRun => "mapping the vcpu's kvm_run",
            Step::Sregs => "KVM_GET_SREGS/KVM_SET_SREGS",
            Step::Regs => "KVM_SET_REGS",
            Step::Run => "KVM_RUN",
            Step::Exit => "the test guest's exits (want io then hlt)",
        })
    }
}

/// Checks that the KVM `device` runs a test guest natively (see the module docs); returns at
/// the latest `deadline` (plus up to a second reaping a child that ignores `SIGKILL`) after the
/// call. A missing device answers [`KvmCheck::NoDevice`] without forking.
pub fn check(device: &Path, deadline: Duration) -> KvmCheck {
    if !device.exists() {
        return KvmCheck::NoDevice;
    }
    let Ok(path) = CString::new(device.as_os_str().as_bytes()) else {
        return KvmCheck::NoDevice;
    };
    let until = Instant::now() + deadline;
    let Some(child) = fork_check(&path) else {
        return KvmCheck::NotRun;
    };
    match wait_until(child, until) {
        Waited::Exited(status) => answer(status),
        Waited::Lost => KvmCheck::NotRun,
        Waited::Killed => KvmCheck::TooSlow(deadline),
    }
}

/// The answer a finished child's `status` gives.
fn answer(status: WaitStatus) -> KvmCheck {
    match status.exit_status() {
        Some(0) => KvmCheck::Works,
        Some(code) => Step::from_code(code).map_or(KvmCheck::NotRun, KvmCheck::Failed),
        None => KvmCheck::NotRun,
    }
}

/// How waiting for the child ended.
#[derive(Debug)]
enum Waited {
    /// It ended before the deadline.
    Exited(WaitStatus),
    /// It is not our child any more (`SIGCHLD` ignored, or reaped elsewhere).
    Lost,
    /// It was still running at the deadline and got `SIGKILL`.
    Killed,
}

/// Waits for `pid` until `until`; past it, kills and reaps it.
fn wait_until(pid: Pid, until: Instant) -> Waited {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => return Waited::Exited(status),
            Ok(None) | Err(Errno::INTR) => {}
            Err(_) => return Waited::Lost,
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep(POLL.min(until - now));
    }
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    let reap_until = Instant::now() + REAP_TIMEOUT;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(None) | Err(Errno::INTR) if Instant::now() < reap_until => {
                std::thread::sleep(POLL);
            }
            Ok(None) | Err(Errno::INTR) => {
                tracing::warn!(%pid, "the kvm check's child survived SIGKILL; leaving it");
                return Waited::Killed;
            }
            Ok(Some(_)) | Err(_) => return Waited::Killed,
        }
    }
}

/// Forks a child that runs [`run_guest`] on `device` and exits with its answer.
#[allow(unsafe_code)]
fn fork_check(device: &CStr) -> Option<Pid> {
    // SAFETY: the child runs only `run_guest` and `_exit`, which make system calls on stack
    // data and the path the parent allocated before forking: no allocation, no lock another
    // thread could have held at the fork, no unwinding (nothing in them panics).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // A parent killed mid-check must not leave a child spinning in KVM_RUN.
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        let code = match run_guest(device) {
            Ok(()) => 0,
            Err(step) => step.code(),
        };
        // SAFETY: `_exit` ends the child at once, without the parent's atexit handlers or
        // buffered output; the kernel closes the descriptors and unmaps the memory.
        unsafe { libc::_exit(code) }
    }
    Pid::from_raw(pid)
}

// The KVM ABI (linux/kvm.h, x86), declared here rather than pulling in kvm-bindings for five
// structures; the size assertions below tie them to the ioctl numbers' encoded sizes.

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KvmSegment {
    base: u64,
    limit: u32,
    selector: u16,
    type_: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KvmDtable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}

/// `struct kvm_sregs`; `segments` are cs, ds, es, fs, gs, ss, tr, ldt.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KvmSregs {
    segments: [KvmSegment; 8],
    gdt: KvmDtable,
    idt: KvmDtable,
    /// cr0, cr2, cr3, cr4, cr8, efer, apic_base.
    control: [u64; 7],
    interrupt_bitmap: [u64; 4],
}

/// `struct kvm_regs`: rax..r15 in the kernel's order, then rip and rflags.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KvmRegs {
    general: [u64; 16],
    rip: u64,
    rflags: u64,
}

#[repr(C)]
struct KvmUserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

const _: () = assert!(size_of::<KvmSregs>() == 312);
const _: () = assert!(size_of::<KvmRegs>() == 144);
const _: () = assert!(size_of::<KvmUserspaceMemoryRegion>() == 32);

/// `_IOC(dir, KVMIO, nr, size)`.
const fn kvm_ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (0xae << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const KVM_GET_API_VERSION: u32 = kvm_ioc(0, 0x00, 0);
const KVM_CREATE_VM: u32 = kvm_ioc(0, 0x01, 0);
const KVM_GET_VCPU_MMAP_SIZE: u32 = kvm_ioc(0, 0x04, 0);
const KVM_CREATE_VCPU: u32 = kvm_ioc(0, 0x41, 0);
const KVM_SET_USER_MEMORY_REGION: u32 =
    kvm_ioc(IOC_WRITE, 0x46, size_of::<KvmUserspaceMemoryRegion>());
const KVM_RUN: u32 = kvm_ioc(0, 0x80, 0);
const KVM_SET_REGS: u32 = kvm_ioc(IOC_WRITE, 0x82, size_of::<KvmRegs>());
const KVM_GET_SREGS: u32 = kvm_ioc(IOC_READ, 0x83, size_of::<KvmSregs>());
const KVM_SET_SREGS: u32 = kvm_ioc(IOC_WRITE, 0x84, size_of::<KvmSregs>());

const KVM_API_VERSION: i32 = 12;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;
const KVM_EXIT_IO_OUT: u8 = 1;

/// Offsets in `struct kvm_run`: `exit_reason`, then the `io` member of the exit union.
const RUN_EXIT_REASON: usize = 8;
const RUN_IO_DIRECTION: usize = 32;
const RUN_IO_SIZE: usize = 33;
const RUN_IO_PORT: usize = 34;
const RUN_IO_COUNT: usize = 36;
const RUN_IO_DATA_OFFSET: usize = 40;

const PAGE: usize = 4096;

/// `ioctl(fd, request, arg)`, retried on `EINTR`; `Err(step)` when it fails.
#[allow(unsafe_code)]
fn kvm_ioctl(fd: i32, request: u32, arg: usize, step: Step) -> Result<i32, Step> {
    loop {
        // SAFETY: `request` is one of the KVM ioctls above, each given what it expects: no
        // argument, a number, or a pointer to a live structure of the size the request encodes.
        let rc = unsafe { libc::ioctl(fd, request as libc::Ioctl, arg) };
        if rc >= 0 {
            return Ok(rc);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(step);
        }
    }
}

/// Runs the test program in a new VM; in the forked child, so system calls only.
#[allow(unsafe_code)]
fn run_guest(device: &CStr) -> Result<(), Step> {
    // SAFETY: `device` is a NUL-terminated path.
    let kvm = unsafe { libc::open(device.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if kvm < 0 {
        return Err(Step::Open);
    }
    if kvm_ioctl(kvm, KVM_GET_API_VERSION, 0, Step::ApiVersion)? != KVM_API_VERSION {
        return Err(Step::ApiVersion);
    }
    let vm = kvm_ioctl(kvm, KVM_CREATE_VM, 0, Step::CreateVm)?;

    // SAFETY: a new private anonymous mapping; nothing else refers to that range.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if memory == libc::MAP_FAILED {
        return Err(Step::GuestMemory);
    }
    // SAFETY: `memory` is a writable page, longer than the program; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(GUEST_CODE.as_ptr(), memory.cast::<u8>(), GUEST_CODE.len())
    };
    let region = KvmUserspaceMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: PAGE as u64,
        userspace_addr: memory as u64,
    };
    let region_ptr = &raw const region as usize;
    kvm_ioctl(
        vm,
        KVM_SET_USER_MEMORY_REGION,
        region_ptr,
        Step::MemoryRegion,
    )?;

    let vcpu = kvm_ioctl(vm, KVM_CREATE_VCPU, 0, Step::CreateVcpu)?;
    let run_size = kvm_ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, Step::MapRun)?;
    let run_len = usize::try_from(run_size).map_err(|_| Step::MapRun)?;
    // SAFETY: maps the vCPU's `kvm_run` area, the size KVM_GET_VCPU_MMAP_SIZE gave.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        )
    };
    if run == libc::MAP_FAILED {
        return Err(Step::MapRun);
    }
    let run = RunArea {
        ptr: run.cast::<u8>().cast_const(),
        len: run_len,
    };

    let mut sregs = KvmSregs::default();
    kvm_ioctl(vcpu, KVM_GET_SREGS, &raw mut sregs as usize, Step::Sregs)?;
    // Real mode as the vCPU resets into it, with the code segment at 0 instead of 0xf0000.
    sregs.segments[0].base = 0;
    sregs.segments[0].selector = 0;
    kvm_ioctl(vcpu, KVM_SET_SREGS, &raw const sregs as usize, Step::Sregs)?;
    let regs = KvmRegs {
        rip: GUEST_ADDR,
        rflags: 0x2,
        ..KvmRegs::default()
    };
    kvm_ioctl(vcpu, KVM_SET_REGS, &raw const regs as usize, Step::Regs)?;

    kvm_ioctl(vcpu, KVM_RUN, 0, Step::Run)?;
    let data = run
        .read::<u64>(RUN_IO_DATA_OFFSET)
        .and_then(|offset| usize::try_from(offset).ok())
        .and_then(|offset| run.read::<u8>(offset));
    let out = run.read::<u32>(RUN_EXIT_REASON) == Some(KVM_EXIT_IO)
        && run.read::<u8>(RUN_IO_DIRECTION) == Some(KVM_EXIT_IO_OUT)
        && run.read::<u8>(RUN_IO_SIZE) == Some(1)
        && run.read::<u32>(RUN_IO_COUNT) == Some(1)
        && run.read::<u16>(RUN_IO_PORT) == Some(u16::from(PORT))
        && data == Some(MAGIC);
    if !out {
        return Err(Step::Exit);
    }
    kvm_ioctl(vcpu, KVM_RUN, 0, Step::Run)?;
    if run.read::<u32>(RUN_EXIT_REASON) != Some(KVM_EXIT_HLT) {
        return Err(Step::Exit);
    }
    Ok(())
}

/// A vCPU's mapped `struct kvm_run`.
struct RunArea {
    ptr: *const u8,
    len: usize,
}

impl RunArea {
    /// The `T` at `offset`, if it lies inside the area.
    #[allow(unsafe_code)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset.checked_add(size_of::<T>())? > self.len {
            return None;
        }
        // SAFETY: `ptr` maps `len` readable bytes (the size KVM_GET_VCPU_MMAP_SIZE gave) for the
        // rest of the process, and the read lies inside them; KVM writes the area only while
        // KVM_RUN runs on this thread, and `read_unaligned` needs no alignment.
        Some(unsafe { self.ptr.add(offset).cast::<T>().read_unaligned() })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From linux/kvm.h as compiled on x86_64.
        assert_eq!(KVM_GET_API_VERSION, 0xae00);
        assert_eq!(KVM_CREATE_VM, 0xae01);
        assert_eq!(KVM_GET_VCPU_MMAP_SIZE, 0xae04);
        assert_eq!(KVM_CREATE_VCPU, 0xae41);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_SREGS, 0x4138_ae84);
    }

    #[test]
    fn the_loop_jumps_back_to_its_decrement() {
        let jnz = GUEST_CODE.iter().position(|b| *b == 0x75).unwrap();
        let target = jnz as isize + 2 + isize::from(GUEST_CODE[jnz + 1] as i8);
        assert_eq!(&GUEST_CODE[target as usize..jnz], &[0x66, 0x49]);
        assert_eq!(GUEST_CODE.last(), Some(&0xf4), "ends with hlt");
    }

    #[test]
    fn every_step_has_its_own_exit_code() {
        for step in Step::ALL {
            assert_ne!(step.code(), 0);
            assert_eq!(Step::from_code(step.code()), Some(step));
        }
        assert_eq!(Step::from_code(0), None);
    }

    #[test]
    fn a_missing_device_answers_without_forking() {
        let dir = tempfile::tempdir().unwrap();
        let answer = check(&dir.path().join("kvm"), CHECK_DEADLINE);
        assert_eq!(answer, KvmCheck::NoDevice);
        assert!(!answer.works());
        assert_eq!(answer.to_string(), "no /dev/kvm");
    }

    #[test]
    fn a_device_that_is_not_kvm_fails_at_the_api_version() {
        // The child opens /dev/null, whose ioctls fail: the step comes back in its exit code.
        let answer = check(Path::new("/dev/null"), Duration::from_secs(30));
        assert_eq!(answer, KvmCheck::Failed(Step::ApiVersion), "{answer}");
        assert!(answer.to_string().contains("KVM_GET_API_VERSION"));
    }

    #[test]
    fn a_device_that_cannot_be_opened_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let answer = check(dir.path(), Duration::from_secs(30));
        assert_eq!(answer, KvmCheck::Failed(Step::Open), "{answer}");
    }

    #[test]
    fn a_child_past_the_deadline_is_killed_and_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        let waited = wait_until(pid, Instant::now() + Duration::from_millis(50));
        assert!(matches!(waited, Waited::Killed), "{waited:?}");
        // Reaped by wait_until: the pid is no longer our child.
        assert!(child.try_wait().is_err(), "the child was not reaped");
    }

    #[test]
    fn the_check_on_this_host_gives_an_answer() {
        if !Path::new(KVM_DEVICE).exists() {
            eprintln!("skipping: no {KVM_DEVICE}");
            return;
        }
        let start = Instant::now();
        let answer = check(Path::new(KVM_DEVICE), CHECK_DEADLINE);
        eprintln!("kvm check: {answer} ({:?})", start.elapsed());
        assert_ne!(answer, KvmCheck::NoDevice);
        assert_ne!(answer, KvmCheck::NotRun, "the child ended abnormally");
    }
}
