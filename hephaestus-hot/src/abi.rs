//! The boundary between a host and a hot library: the C-ABI shim each exported function
//! gets ([`shim`]), the metadata symbol that describes it ([`Meta`], [`meta_text`]), the panic buffer,
//! and the fingerprint both sides compare.
//!
//! Every exported function `NAME` of a hot library has two symbols:
//! - `__heph_hot_fn_NAME`: `unsafe extern "C" fn(args, ret, panic) -> u32`. `args`
//!   points to the arguments as one tuple, which the library takes ownership of;
//!   `ret` to uninitialized space for the result; `panic` to a [`PanicBuf`]. It returns
//!   [`STATUS_OK`] with the result written, or [`STATUS_PANICKED`] with the panic's
//!   message copied into the buffer (the panic never crosses the boundary: it is
//!   caught inside the library, by the library's own std).
//! - `__heph_hot_meta_NAME`: `extern "C" fn() -> RawStr`, the function's [`Meta`] as
//!   text (format version, fingerprint, interface digest, signature).
//!
//! Values cross by move in the Rust layout both sides compiled with the same compiler,
//! target and profile (the fingerprint) from the same type definitions (the interface
//! digest); owned heap values are freed by the other side, which is sound because both
//! use the process's one C allocator through std's default `System` allocator.

use std::any::type_name;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The result was written to `ret`.
pub const STATUS_OK: u32 = 0;
/// The function panicked; the message is in the [`PanicBuf`].
pub const STATUS_PANICKED: u32 = 1;

/// The version of this boundary's layout; part of every [`Meta`].
pub const ABI_VERSION: u32 = 1;

/// The prefix of the exported call symbols.
pub const FN_PREFIX: &str = "__heph_hot_fn_";
/// The prefix of the exported metadata symbols.
pub const META_PREFIX: &str = "__heph_hot_meta_";

/// The signature of an exported call symbol.
pub type RawCall = unsafe extern "C" fn(args: *mut (), ret: *mut (), panic: *mut PanicBuf) -> u32;

/// The signature of an exported metadata symbol.
pub type RawMeta = extern "C" fn() -> RawStr;

/// A string borrowed across the boundary (bytes that live as long as the library).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawStr {
    /// The first byte.
    pub ptr: *const u8,
    /// The length in bytes.
    pub len: usize,
}

impl RawStr {
    /// Borrow `s` (which must outlive every reader: a `'static` string).
    pub fn new(s: &'static str) -> RawStr {
        RawStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
}

/// The size of a panic message kept across the boundary (longer ones are cut).
pub const PANIC_BUF: usize = 1024;

/// Space, owned by the caller, for the message of a panic in the library. The message
/// is copied in, so no allocation crosses the boundary on this path.
#[repr(C)]
#[derive(Debug)]
pub struct PanicBuf {
    len: usize,
    bytes: [u8; PANIC_BUF],
}

impl Default for PanicBuf {
    fn default() -> Self {
        PanicBuf {
            len: 0,
            bytes: [0; PANIC_BUF],
        }
    }
}

impl PanicBuf {
    /// Copy `message` in, cut at a character boundary to fit.
    pub fn set(&mut self, message: &str) {
        let mut end = message.len().min(PANIC_BUF);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes[..end].copy_from_slice(&message.as_bytes()[..end]);
        self.len = end;
    }

    /// The message.
    pub fn message(&self) -> String {
        let len = self.len.min(PANIC_BUF);
        String::from_utf8_lossy(&self.bytes[..len]).into_owned()
    }
}

/// The fingerprint of the crate expanding this macro: the compiler, target and profile
/// this runtime was built with, and the crate's own `debug_assertions` and panic
/// strategy. Host and library must have equal fingerprints.
#[macro_export]
#[doc(hidden)]
macro_rules! __fingerprint {
    () => {
        $crate::abi::fingerprint(cfg!(debug_assertions), cfg!(panic = "unwind"))
    };
}

/// The interface digests heph computed from the hot crate's sources for this build
/// (`HEPH_HOT_INTERFACE` at compile time, `name=digest,...`; empty without heph).
#[macro_export]
#[doc(hidden)]
macro_rules! __interface {
    () => {
        match option_env!("HEPH_HOT_INTERFACE") {
            Some(d) => d,
            None => "",
        }
    };
}

/// The digest of function `name` in `digests` (`name=digest,...`); empty when absent.
pub fn interface_of(digests: &str, name: &str) -> String {
    digests
        .split(',')
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
        .to_owned()
}

/// The prefix heph gives the digest of a function that uses no type defined in the hot
/// crate (only std's and other crates' types, which host and library share).
pub const OUTSIDE_TYPES_PREFIX: &str = "s:";

/// Does this digest say its function uses no type of the hot crate?
pub fn uses_only_outside_types(digest: &str) -> bool {
    digest.starts_with(OUTSIDE_TYPES_PREFIX)
}

/// The fingerprint text for a crate with these settings.
pub fn fingerprint(debug_assertions: bool, unwind: bool) -> String {
    format!(
        "{}; debug-assertions {}; panic {}; abi {ABI_VERSION}",
        env!("HEPH_HOT_BUILD"),
        if debug_assertions { "on" } else { "off" },
        if unwind { "unwind" } else { "abort" },
    )
}

/// The signature of a function taking the tuple `A` and returning `R`, as both sides
/// spell it (`fn render(&counter::Stats) -> alloc::string::String`).
pub fn signature<A, R>(name: &str) -> String {
    let args = type_name::<A>();
    // `(A, B,)` → `A, B`
    let inner = args
        .strip_prefix('(')
        .and_then(|a| a.strip_suffix(')'))
        .map(|a| a.strip_suffix(',').unwrap_or(a))
        .unwrap_or(args);
    format!("fn {name}({inner}) -> {}", type_name::<R>())
}

/// What a library says about one exported function, and a host expects of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The boundary's version ([`ABI_VERSION`]).
    pub abi: u32,
    /// Compiler, target, profile, assertions, panic strategy.
    pub fingerprint: String,
    /// heph's digest of the function's part of the hot crate's interface: its signature
    /// and the definitions of the types it reaches (empty when built without heph).
    pub interface: String,
    /// The function's signature ([`signature`]).
    pub signature: String,
}

impl Meta {
    /// The text form carried by the metadata symbol.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "heph-hot {}\nfingerprint {}\ninterface {}\nsignature {}",
            self.abi, self.fingerprint, self.interface, self.signature
        );
        s
    }

    /// Parse the text form; None when it is not one.
    pub fn parse(text: &str) -> Option<Meta> {
        let mut lines = text.lines();
        let abi = lines.next()?.strip_prefix("heph-hot ")?.parse().ok()?;
        let fingerprint = lines.next()?.strip_prefix("fingerprint ")?.to_owned();
        let interface = lines.next()?.strip_prefix("interface ")?.to_owned();
        let signature = lines.next()?.strip_prefix("signature ")?.to_owned();
        Some(Meta {
            abi,
            fingerprint,
            interface,
            signature,
        })
    }

    /// The first difference from `expected`, as one line; None when they are equal.
    pub fn mismatch(&self, expected: &Meta) -> Option<String> {
        if self.abi != expected.abi {
            return Some(format!(
                "boundary version {} differs from the host's {}",
                self.abi, expected.abi
            ));
        }
        if self.fingerprint != expected.fingerprint {
            return Some(format!(
                "build fingerprint `{}` differs from the host's `{}`",
                self.fingerprint, expected.fingerprint
            ));
        }
        if self.interface != expected.interface {
            return Some(format!(
                "interface digest `{}` differs from the host's `{}`",
                self.interface, expected.interface
            ));
        }
        if self.signature != expected.signature {
            return Some(format!(
                "signature `{}` differs from the host's `{}`",
                self.signature, expected.signature
            ));
        }
        None
    }
}

/// The metadata text of an exported function (built once, kept for the library's life).
pub fn meta_text<A, R>(name: &str, fingerprint: String, digests: &str) -> &'static str {
    let text = Meta {
        abi: ABI_VERSION,
        fingerprint,
        interface: interface_of(digests, name),
        signature: signature::<A, R>(name),
    }
    .to_text();
    Box::leak(text.into_boxed_str())
}

/// The body of every exported call symbol: take the arguments, run `f` with panics
/// caught, write the result or the panic's message.
///
/// # Safety
/// `args` must point to an initialized `A` that the caller gives up (it will not drop
/// or use it again), `ret` to space for an `R` that the caller treats as initialized
/// only when [`STATUS_OK`] is returned, and `panic` to a valid [`PanicBuf`]; `A` and
/// `R` must be the types the caller used, with the same layout (same compiler, target,
/// profile and definitions: what the fingerprint, interface digest and signature
/// checks establish before any call).
pub unsafe fn shim<A, R>(
    args: *mut (),
    ret: *mut (),
    panic: *mut PanicBuf,
    f: impl FnOnce(A) -> R,
) -> u32 {
    // SAFETY: the caller guarantees `args` points to an initialized `A` it gives up,
    // so reading it moves it here exactly once.
    let a = unsafe { std::ptr::read(args.cast::<A>()) };
    match catch_unwind(AssertUnwindSafe(|| f(a))) {
        Ok(r) => {
            // SAFETY: the caller guarantees `ret` is valid, aligned space for an `R`.
            unsafe { std::ptr::write(ret.cast::<R>(), r) };
            STATUS_OK
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
            // Dropping the payload runs code of the library's own; a panic there must
            // not cross the boundary either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            // SAFETY: the caller guarantees `panic` points to a valid PanicBuf that
            // nothing else uses during the call.
            unsafe { (*panic).set(&message) };
            STATUS_PANICKED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_spell_tuples_as_argument_lists() {
        assert_eq!(
            signature::<(&str, u64), String>("f"),
            "fn f(&str, u64) -> alloc::string::String"
        );
        assert_eq!(signature::<(u8,), ()>("g"), "fn g(u8) -> ()");
        assert_eq!(signature::<(), u8>("h"), "fn h() -> u8");
    }

    #[test]
    fn meta_round_trips_and_names_the_first_difference() {
        let m = Meta {
            abi: ABI_VERSION,
            fingerprint: fingerprint(true, true),
            interface: "abc".into(),
            signature: signature::<(u8,), u8>("f"),
        };
        assert_eq!(Meta::parse(&m.to_text()), Some(m.clone()));
        assert_eq!(m.mismatch(&m), None);
        let other = Meta {
            fingerprint: fingerprint(false, true),
            ..m.clone()
        };
        let why = other.mismatch(&m).expect("differs");
        assert!(why.contains("debug-assertions off"), "{why}");
        let other = Meta {
            signature: signature::<(u16,), u8>("f"),
            ..m.clone()
        };
        assert!(other.mismatch(&m).expect("differs").contains("fn f(u16)"));
        assert_eq!(Meta::parse("nonsense"), None);
    }

    #[test]
    fn each_function_has_its_own_digest() {
        let d = "render=1a,greet=2b,render2=3c";
        assert_eq!(interface_of(d, "render"), "1a");
        assert_eq!(interface_of(d, "render2"), "3c");
        assert_eq!(interface_of(d, "greet"), "2b");
        assert_eq!(interface_of(d, "rend"), "");
        assert_eq!(interface_of("", "render"), "");
    }

    #[test]
    fn panic_messages_are_cut_at_a_character_boundary() {
        let mut b = PanicBuf::default();
        let long = "é".repeat(PANIC_BUF);
        b.set(&long);
        let m = b.message();
        assert!(m.len() <= PANIC_BUF && m.chars().all(|c| c == 'é'));
        b.set("short");
        assert_eq!(b.message(), "short");
        // The cut falls inside a two-byte character: it moves back before it.
        let odd = format!("a{}", "é".repeat(PANIC_BUF));
        b.set(&odd);
        assert_eq!(b.message().len(), PANIC_BUF - 1);
        assert!(b.message().starts_with("aé"));
    }

    #[test]
    fn only_digests_marked_outside_use_no_type_of_the_crate() {
        assert!(uses_only_outside_types("s:0123abcd"));
        assert!(!uses_only_outside_types("0123abcd"));
        assert!(!uses_only_outside_types(""));
    }

    #[test]
    fn meta_text_carries_the_functions_own_digest() {
        let text = meta_text::<(u8,), String>("f", fingerprint(true, true), "g=1,f=s:2");
        let m = Meta::parse(text).expect("parses");
        assert_eq!(m.interface, "s:2");
        assert_eq!(m.signature, "fn f(u8) -> alloc::string::String");
        assert_eq!(m.fingerprint, fingerprint(true, true));
        assert_eq!(m.abi, ABI_VERSION);
    }

    #[test]
    fn the_shim_moves_arguments_in_and_the_result_out() {
        let mut args = std::mem::ManuallyDrop::new((String::from("ab"), 3usize));
        let mut ret = std::mem::MaybeUninit::<String>::uninit();
        let mut panic = PanicBuf::default();
        // SAFETY: args is an initialized tuple given up (ManuallyDrop), ret has room
        // for a String, panic is a valid buffer; both sides are this test.
        let status = unsafe {
            shim::<(String, usize), String>(
                (&raw mut *args).cast(),
                ret.as_mut_ptr().cast(),
                &raw mut panic,
                |(s, n)| s.repeat(n),
            )
        };
        assert_eq!(status, STATUS_OK);
        // SAFETY: STATUS_OK means the shim wrote the String.
        assert_eq!(unsafe { ret.assume_init() }, "ababab");
    }

    #[test]
    fn the_shim_catches_a_panic_and_copies_its_message() {
        let mut args = std::mem::ManuallyDrop::new((7u32,));
        let mut ret = std::mem::MaybeUninit::<u32>::uninit();
        let mut panic = PanicBuf::default();
        // SAFETY: as above; the closure panics, so ret stays uninitialized and unread.
        let status = unsafe {
            shim::<(u32,), u32>(
                (&raw mut *args).cast(),
                ret.as_mut_ptr().cast(),
                &raw mut panic,
                |(n,)| panic!("bad input {n}"),
            )
        };
        assert_eq!(status, STATUS_PANICKED);
        assert_eq!(panic.message(), "bad input 7");
    }
}
