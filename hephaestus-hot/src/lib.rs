//! `hephaestus-hot`: reload code inside a running Rust program, the runtime of
//! `heph watch --hot`.
//!
//! A program (the *host*) keeps its state; the code meant to change while it runs lives
//! in a *hot crate* of the same project, built as a `cdylib` (and an `rlib`, so the host
//! can name its types). The hot crate marks its exported functions with [`export!`];
//! the host declares the ones it calls with [`import!`], calls [`start`] once, and then
//! calls them like ordinary functions (they return `Result<_, HotError>`). Under
//! `heph watch --hot`, each save of the hot crate that keeps its interface is built,
//! loaded into the running program as a new *generation*, checked, and swapped in
//! between calls; the registered [`on_reload`] callbacks run with the generation's id.
//!
//! ```ignore
//! // The hot crate (crate-type = ["cdylib", "rlib"]):
//! #[derive(Debug, Default)]
//! pub struct Stats { pub count: u64 }
//! hephaestus_hot::export! {
//!     pub fn render(stats: &Stats) -> String { format!("hello #{}", stats.count) }
//! }
//!
//! // The host:
//! hephaestus_hot::import! {
//!     mod hot from "render" {
//!         pub fn render(stats: &render::Stats) -> String;
//!     }
//! }
//! fn main() -> Result<(), hephaestus_hot::HotError> {
//!     hephaestus_hot::start(&hot::LIBRARY)?;
//!     hephaestus_hot::on_reload(|generation| eprintln!("now serving generation {generation}"));
//!     let text = hot::render(&render::Stats { count: 1 })?;
//!     Ok(())
//! }
//! ```
//!
//! # Why a `cdylib` with a C-ABI shim
//! Each exported function gets an `extern "C"` shim that catches panics *inside the
//! library* (with the library's own std) and returns a status, so a panic never
//! crosses the boundary: with a `cdylib`, host and library each carry their own std,
//! and a panic unwinding from one into the other aborts the process even inside the
//! host's `catch_unwind` (measured). The other design, a Rust `dylib` with both sides
//! built with `-C prefer-dynamic` (one shared `libstd.so`), catches panics in the host,
//! but needs the toolchain's `libstd-*.so` at run time, and cargo builds a `dylib`
//! against the shared std as a dependency and with std linked in when built alone: the
//! two kinds flip at one path and each flip throws away rustc's incremental cache.
//!
//! # What the runtime checks before a generation serves
//! The library's metadata for every imported function: the boundary version, the build
//! fingerprint (compiler version, target, profile, `debug_assertions`, panic strategy:
//! [`abi::fingerprint`]), the digest heph computed from the hot crate's sources of the
//! function's signature and of every type it reaches (`HEPH_HOT_INTERFACE` at compile
//! time), and the signature (argument and
//! result types by `type_name`). Any difference refuses the library; the serving
//! generation goes on.
//!
//! # Self-healing
//! A call that panics returns [`HotError::Panicked`]. After `max_panics` panics within
//! `window` (default 5 in 10 s, configurable by heph) the runtime serves the previous
//! good generation again by itself and tells heph. What cannot be caught: an abort
//! (a panic while panicking, `panic = "abort"`, `std::process::abort`, a stack
//! overflow, an allocation failure), a signal (a segfault from `unsafe` code, SIGKILL),
//! `std::process::exit`, an endless loop or a deadlock in hot code. heph restarts a
//! process that dies with the last good binary and library.
//!
//! # Memory
//! A generation is never unloaded: a call may still be running in it, a value it
//! returned may point into it (a `&'static str`), and a Rust library with thread-local
//! destructors stays mapped after `dlclose` anyway (unloading one can crash at exit).
//! Each reload costs the pages of the new library the program touches (measured in
//! BENCHMARKS.md). Statics and thread-locals of the hot crate start from zero in each
//! generation: state belongs in the host.
//!
//! Owned values (a `String` returned) are freed by the other side: both sides must use
//! std's default global allocator (the C allocator); a host or library with its own
//! `#[global_allocator]` must not pass owned heap values across.
//!
//! # Platforms
//! Linux (tested). The loader is libloading and the channel a Unix socket, so other
//! Unix systems should work but are untested; macOS refuses to unload Rust libraries
//! with thread-local destructors, which this runtime never does. Windows: not supported
//! (no Unix socket channel).

pub mod abi;
pub mod policy;
mod runtime;

use std::fmt;

pub use policy::PanicPolicy;
pub use runtime::{LIB_ENV, Runtime, SOCKET_ENV, call, on_reload, runtime, start};

/// Why a hot call or a load failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HotError {
    /// [`start`] was not called (or failed).
    NotStarted,
    /// The library could not be loaded or was refused.
    Load {
        /// What went wrong.
        reason: String,
    },
    /// The channel to heph failed.
    Channel {
        /// What went wrong.
        reason: String,
    },
    /// The serving generation's function differs from what the host expects.
    Mismatch {
        /// The function.
        function: String,
        /// The generation.
        generation: u64,
        /// The first difference.
        reason: String,
    },
    /// The serving generation does not export the function.
    Missing {
        /// The function.
        function: String,
        /// The generation.
        generation: u64,
    },
    /// The function panicked (caught at the library's boundary).
    Panicked {
        /// The function.
        function: String,
        /// The generation it ran in.
        generation: u64,
        /// The panic's message.
        message: String,
    },
}

impl fmt::Display for HotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HotError::NotStarted => {
                f.write_str("hot reload is not started (call hephaestus_hot::start first)")
            }
            HotError::Load { reason } => write!(f, "hot library refused: {reason}"),
            HotError::Channel { reason } => write!(f, "hot-reload channel: {reason}"),
            HotError::Mismatch {
                function,
                generation,
                reason,
            } => write!(f, "hot fn {function} of generation {generation}: {reason}"),
            HotError::Missing {
                function,
                generation,
            } => write!(
                f,
                "generation {generation} does not export hot fn {function}"
            ),
            HotError::Panicked {
                function,
                generation,
                message,
            } => write!(
                f,
                "hot fn {function} panicked in generation {generation}: {message}"
            ),
        }
    }
}

impl std::error::Error for HotError {}

/// A hot library as the host expects it; defined by [`import!`] as `LIBRARY`.
#[derive(Debug)]
pub struct LibrarySpec {
    /// The hot crate's name (its library file is `lib<name>.so`).
    pub name: &'static str,
    /// The host's fingerprint.
    pub fingerprint: fn() -> String,
    /// The interface digests the host was built with (`name=digest,...`).
    pub interface: &'static str,
    /// The functions the host calls, checked at each load.
    pub imports: &'static [Import],
}

/// One function the host calls.
#[derive(Debug)]
pub struct Import {
    /// Its name.
    pub name: &'static str,
    /// What the library must say about it.
    pub expected: fn() -> abi::Meta,
}

#[doc(hidden)]
#[macro_export]
macro_rules! __ret {
    () => {
        ()
    };
    ($t:ty) => {
        $t
    };
}

/// Export functions of a hot crate: each is defined as written, plus a C-ABI shim that
/// catches its panics and a metadata symbol (see [`abi`]). Arguments are plain
/// `name: Type` pairs.
///
/// ```ignore
/// hephaestus_hot::export! {
///     /// The line `GET /` answers.
///     pub fn render(stats: &Stats) -> String {
///         "hello".to_owned()
///     }
/// }
/// ```
#[macro_export]
macro_rules! export {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? $body:block
    )*) => {$(
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? $body

        const _: () = {
            #[unsafe(export_name = concat!("__heph_hot_fn_", stringify!($name)))]
            unsafe extern "C" fn call(
                args: *mut (),
                ret: *mut (),
                panic: *mut $crate::abi::PanicBuf,
            ) -> u32 {
                // SAFETY: the runtime calls this symbol only through `hephaestus_hot::call`,
                // after the metadata check proved the caller's argument and result types,
                // compiler and profile are these; it upholds `shim`'s contract.
                unsafe {
                    $crate::abi::shim::<($($ty,)*), $crate::__ret!($($ret)?)>(
                        args, ret, panic, |($($arg,)*)| $name($($arg),*),
                    )
                }
            }

            #[unsafe(export_name = concat!("__heph_hot_meta_", stringify!($name)))]
            extern "C" fn meta() -> $crate::abi::RawStr {
                static TEXT: ::std::sync::OnceLock<&'static str> = ::std::sync::OnceLock::new();
                $crate::abi::RawStr::new(TEXT.get_or_init(|| {
                    $crate::abi::meta_text::<($($ty,)*), $crate::__ret!($($ret)?)>(
                        stringify!($name),
                        $crate::__fingerprint!(),
                        $crate::__interface!(),
                    )
                }))
            }
        };
    )*};
}

/// Declare the hot functions a host calls: a module holding `LIBRARY` (pass it to
/// [`start`]) and one function per declaration, with the declared arguments, returning
/// `Result<T, HotError>`; each call runs the serving generation.
///
/// ```ignore
/// hephaestus_hot::import! {
///     pub mod hot from "render" {
///         pub fn render(stats: &render::Stats) -> String;
///     }
/// }
/// ```
#[macro_export]
macro_rules! import {
    (
        $(#[$mattr:meta])*
        $mvis:vis mod $module:ident from $lib:literal {$(
            $(#[$attr:meta])*
            $vis:vis fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? ;
        )*}
    ) => {
        $(#[$mattr])*
        $mvis mod $module {
            #[allow(unused_imports)]
            use super::*;

            /// The hot library these functions run in: pass it to `hephaestus_hot::start`.
            pub static LIBRARY: $crate::LibrarySpec = $crate::LibrarySpec {
                name: $lib,
                fingerprint: || $crate::__fingerprint!(),
                interface: $crate::__interface!(),
                imports: &[$(
                    $crate::Import {
                        name: stringify!($name),
                        expected: || $crate::abi::Meta {
                            abi: $crate::abi::ABI_VERSION,
                            fingerprint: $crate::__fingerprint!(),
                            interface: $crate::abi::interface_of($crate::__interface!(), stringify!($name)),
                            signature: $crate::abi::signature::<($($ty,)*), $crate::__ret!($($ret)?)>(
                                stringify!($name),
                            ),
                        },
                    },
                )*],
            };

            $(
                $(#[$attr])*
                $vis fn $name($($arg: $ty),*)
                    -> ::core::result::Result<$crate::__ret!($($ret)?), $crate::HotError>
                {
                    $crate::call::<($($ty,)*), $crate::__ret!($($ret)?)>(stringify!($name), ($($arg,)*))
                }
            )*
        }
    };
}
